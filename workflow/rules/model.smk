"""Model stages: tokenizer, encoded examples, pretrain, finetune, evaluate (docs/method.md sections 4-7)."""


wildcard_constraints:
    variant="|".join(re.escape(v) for v in VARIANTS),
    seed=r"\d+",


rule tokenizer:
    input:
        catalog="results/{dataset}/processed/items.parquet",
        interactions="results/{dataset}/processed/interactions.parquet",
    output:
        directory("results/{dataset}/tokenizer"),
    params:
        vocab_size=config["model"]["tokenizer_vocab_size"],
        version=VERSION,
    log:
        "logs/{dataset}/tokenizer.log",
    benchmark:
        "benchmarks/{dataset}/tokenizer.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/tokenizer.py"


rule encode:
    input:
        catalog="results/{dataset}/processed/items.parquet",
        interactions="results/{dataset}/processed/interactions.parquet",
        second_order="results/{dataset}/graph/second_order.parquet",
        tokenizer=tokenizer_input,
    output:
        content="results/{dataset}/encoded/content.npz",
    params:
        backbone=config["model"]["backbone"],
        tiny=config["model"]["tiny"],
        max_length=config["model"]["max_length"],
        seed=config["data_seed"],
        version=VERSION,
    log:
        "logs/{dataset}/encode.log",
    benchmark:
        "benchmarks/{dataset}/encode.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../scripts/encode.py"


rule pretrain:
    input:
        processed="results/{dataset}/processed/interactions.parquet",
        graph="results/{dataset}/graph/relation",
        content="results/{dataset}/encoded/content.npz",
        tokenizer=tokenizer_input,
    output:
        directory(f"{RUN}/pretrain"),
    params:
        processed=lambda wc, input: os.path.dirname(input.processed),
        settings=run_settings,
        version=VERSION,
        ckpt=f"{RUN}/pretrain.ckpt",
        tokenizer=lambda wc, input: input.tokenizer or "none",
        cpu_processes=config["launch"]["num_processes"],
    log:
        "logs/{dataset}/{variant}-s{seed}/pretrain.log",
    benchmark:
        "benchmarks/{dataset}/{variant}-s{seed}/pretrain.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        gpu=config["resources"]["train_gpus"],
    shell:
        launch("pretrain.py") + " --processed {params.processed:q} --graph {input.graph:q}"
        " --content {input.content:q} --tokenizer {params.tokenizer:q} --out {output:q} --ckpt {params.ckpt:q}"
        " --settings {params.settings:q} --version {params.version:q} --threads {threads:q} > {log:q} 2>&1"


rule finetune:
    input:
        processed="results/{dataset}/processed/interactions.parquet",
        graph="results/{dataset}/graph/relation",
        pretrained=f"{RUN}/pretrain",
        tokenizer=tokenizer_input,
    output:
        directory(f"{RUN}/finetune"),
    params:
        processed=lambda wc, input: os.path.dirname(input.processed),
        settings=run_settings,
        version=VERSION,
        ckpt=f"{RUN}/finetune.ckpt",
        tokenizer=lambda wc, input: input.tokenizer or "none",
        cpu_processes=config["launch"]["num_processes"],
    log:
        "logs/{dataset}/{variant}-s{seed}/finetune.log",
    benchmark:
        "benchmarks/{dataset}/{variant}-s{seed}/finetune.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        gpu=config["resources"]["train_gpus"],
    shell:
        launch("finetune.py") + " --processed {params.processed:q} --graph {input.graph:q}"
        " --pretrained {input.pretrained:q} --tokenizer {params.tokenizer:q} --out {output:q} --ckpt {params.ckpt:q}"
        " --settings {params.settings:q} --version {params.version:q} --threads {threads:q} > {log:q} 2>&1"


rule evaluate:
    input:
        processed="results/{dataset}/processed/interactions.parquet",
        graph="results/{dataset}/graph/relation",
        finetuned=f"{RUN}/finetune",
        tokenizer=tokenizer_input,
    output:
        metrics=f"{RUN}/metrics.json",
        recommendations=f"{RUN}/recommendations.parquet",
        per_user=f"{RUN}/per_user.parquet",
    params:
        processed=lambda wc, input: os.path.dirname(input.processed),
        settings=run_settings,
        version=VERSION,
        tokenizer=lambda wc, input: input.tokenizer or "none",
        cpu_processes=config["launch"]["num_processes"],
    log:
        "logs/{dataset}/{variant}-s{seed}/evaluate.log",
    benchmark:
        "benchmarks/{dataset}/{variant}-s{seed}/evaluate.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        gpu=config["resources"]["train_gpus"],
    shell:
        launch("evaluate.py") + " --processed {params.processed:q} --graph {input.graph:q}"
        " --finetuned {input.finetuned:q} --tokenizer {params.tokenizer:q} --metrics {output.metrics:q}"
        " --recommendations {output.recommendations:q} --per-user {output.per_user:q}"
        " --settings {params.settings:q} --version {params.version:q} --threads {threads:q} > {log:q} 2>&1"
