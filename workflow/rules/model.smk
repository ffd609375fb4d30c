"""Model stages: tokenizer, encoded examples, pretrain, finetune, evaluate (docs/method.md sections 4-7)."""


wildcard_constraints:
    variant="|".join(re.escape(v) for v in VARIANTS),
    seed=r"\d+",


localrules:
    backbone,


# A local rule (it runs where the network is, like `download`): `model.backbone` once into a
# plain folder the stages read, with its provenance beside it (llm4rec.model.backbone_store). Not
# for tiny, which is trained from scratch.
rule backbone:
    input:
        backbone_source,
    output:
        folder=directory("resources/backbones/{backbone}"),
        record="resources/backbones/{backbone}.json",
    log:
        "logs/backbones/{backbone}.log",
    benchmark:
        "benchmarks/backbones/{backbone}.tsv"
    wildcard_constraints:
        backbone=_alternatives([] if BACKBONE == "tiny" else [BACKBONE_NAME]),
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    params:
        # Functions: a path like ${LLM4REC_CACHE}/... is not a wildcard pattern.
        spec=lambda wildcards: BACKBONE_SPEC,
        revision=lambda wildcards: config["model"].get("backbone_revision"),
    script:
        "../scripts/backbone.py"


rule tokenizer:
    input:
        catalog="results/{dataset}/processed/items.parquet",
        interactions="results/{dataset}/processed/interactions.parquet",
    output:
        directory("results/{dataset}/tokenizer"),
    log:
        "logs/{dataset}/tokenizer.log",
    benchmark:
        "benchmarks/{dataset}/tokenizer.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        vocab_size=config["model"]["tokenizer_vocab_size"],
        version=VERSION,
    script:
        "../scripts/tokenizer.py"


rule encode:
    input:
        catalog="results/{dataset}/processed/items.parquet",
        interactions="results/{dataset}/processed/interactions.parquet",
        second_order="results/{dataset}/graph/second_order.parquet",
        tokenizer=tokenizer_input,
        backbone=backbone_input,
    output:
        content="results/{dataset}/encoded/content.npz",
    log:
        "logs/{dataset}/encode.log",
    benchmark:
        "benchmarks/{dataset}/encode.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        backbone=BACKBONE,
        tiny=config["model"]["tiny"],
        max_length=config["model"]["max_length"],
        seed=config["data_seed"],
        version=VERSION,
    script:
        "../scripts/encode.py"


# The three training and evaluation stages run one command (`launch()`): each names its
# library module and stage and passes its own paths as `params.paths`.
rule pretrain:
    input:
        processed="results/{dataset}/processed/interactions.parquet",
        graph="results/{dataset}/graph/relation",
        content="results/{dataset}/encoded/content.npz",
        tokenizer=tokenizer_input,
        backbone=backbone_input,
    output:
        directory(f"{RUN}/pretrain"),
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
    params:
        module="llm4rec.train.loop",
        stage="pretrain",
        paths=lambda wc, input, output: ["--content", input.content, "--out", output[0], "--ckpt", f"{output[0]}.ckpt"],
        processed=lambda wc, input: os.path.dirname(input.processed),
        settings=run_settings("pretrain"),
        version=VERSION,
        tokenizer=lambda wc, input: input.tokenizer or "none",
        cpu_processes=config["launch"]["num_processes"],
    shell:
        launch()


use rule pretrain as finetune with:
    input:
        processed="results/{dataset}/processed/interactions.parquet",
        graph="results/{dataset}/graph/relation",
        pretrained=f"{RUN}/pretrain",
        tokenizer=tokenizer_input,
        backbone=backbone_input,
    output:
        directory(f"{RUN}/finetune"),
    log:
        "logs/{dataset}/{variant}-s{seed}/finetune.log",
    benchmark:
        "benchmarks/{dataset}/{variant}-s{seed}/finetune.tsv"
    params:
        stage="finetune",
        settings=run_settings("finetune"),
        paths=lambda wc, input, output: [
            "--pretrained",
            input.pretrained,
            "--out",
            output[0],
            "--ckpt",
            f"{output[0]}.ckpt",
        ],


use rule pretrain as evaluate with:
    input:
        processed="results/{dataset}/processed/interactions.parquet",
        graph="results/{dataset}/graph/relation",
        finetuned=f"{RUN}/finetune",
        tokenizer=tokenizer_input,
        backbone=backbone_input,
    output:
        metrics=f"{RUN}/metrics.json",
        recommendations=f"{RUN}/recommendations.parquet",
        per_user=f"{RUN}/per_user.parquet",
    log:
        "logs/{dataset}/{variant}-s{seed}/evaluate.log",
    benchmark:
        "benchmarks/{dataset}/{variant}-s{seed}/evaluate.tsv"
    params:
        module="llm4rec.train.evaluate",
        stage="evaluate",
        settings=run_settings("evaluate"),
        paths=lambda wc, input, output: [
            "--finetuned",
            input.finetuned,
            "--metrics",
            output.metrics,
            "--recommendations",
            output.recommendations,
            "--per-user",
            output.per_user,
        ],
