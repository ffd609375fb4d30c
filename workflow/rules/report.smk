"""Summary over methods and seeds, figures and provenance for `snakemake --report`."""


wildcard_constraints:
    method="|".join(re.escape(m) for m in [*VARIANTS, "multivae"]),


rule summary:
    input:
        summary_inputs,
    output:
        summary=report(
            "results/{dataset}/summary.csv",
            category="2. Results",
            labels={"table": "per method and seed (CSV)"},
            caption="../report/summary.rst",
        ),
        methods="results/{dataset}/summary_methods.csv",
        wilcoxon="results/{dataset}/wilcoxon.csv",
        display="results/{dataset}/report/summary_table.csv",
        html=report(
            "results/{dataset}/report/summary.html",
            category="2. Results",
            labels={"table": "methods: mean ± std, time, p-value"},
            caption="../report/summary.rst",
        ),
    log:
        "logs/{dataset}/summary.log",
    benchmark:
        "benchmarks/{dataset}/summary.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        records=run_records,
        reference=reference_variant(),
        metric=REPORT["test_metric"],
        version=VERSION,
    script:
        "../scripts/summary.py"


rule report_dataset:
    input:
        processed="results/{dataset}/processed/stats.json",
        graph="results/{dataset}/graph/stats.json",
    output:
        report(
            "results/{dataset}/report/dataset.html",
            category="1. Data",
            labels={"figure": "dataset statistics"},
            caption="../report/dataset.rst",
        ),
    log:
        "logs/{dataset}/report_dataset.log",
    benchmark:
        "benchmarks/{dataset}/report_dataset.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        version=VERSION,
    script:
        "../scripts/report_dataset.py"


rule report_bias:
    input:
        graph="results/{dataset}/graph/relation",
        content="results/{dataset}/encoded/content.npz",
        users="results/{dataset}/processed/users.parquet",
        catalog="results/{dataset}/processed/items.parquet",
        pretrained=lambda wc: f"results/{wc.dataset}/{config['run_variants'][0]}-s{config['seeds'][0]}/pretrain",
    output:
        report(
            "results/{dataset}/report/relation_bias.svg",
            category="1. Data",
            labels={"figure": "relation bias of a second-order prompt"},
            caption="../report/relation_bias.rst",
        ),
    log:
        "logs/{dataset}/report_bias.log",
    benchmark:
        "benchmarks/{dataset}/report_bias.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        max_entities=REPORT["heatmap_max_entities"],
        version=VERSION,
    script:
        "../scripts/report_bias.py"


rule report_curves:
    input:
        curve_inputs,
    output:
        report(
            "results/{dataset}/report/curves/{method}.svg",
            category="3. Training curves",
            subcategory="{method}",
            labels={"method": "{method}", "file": "curves"},
            caption="../report/curves.rst",
        ),
    log:
        "logs/{dataset}/report_curves_{method}.log",
    benchmark:
        "benchmarks/{dataset}/report_curves_{method}.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        seeds=config["seeds"],
        version=VERSION,
    script:
        "../scripts/report_curves.py"


rule report_methods:
    input:
        summary="results/{dataset}/summary.csv",
        methods="results/{dataset}/summary_methods.csv",
    output:
        report(
            "results/{dataset}/report/methods.svg",
            category="2. Results",
            labels={"table": "bar chart (mean ± std over seeds)"},
            caption="../report/methods.rst",
        ),
    log:
        "logs/{dataset}/report_methods.log",
    benchmark:
        "benchmarks/{dataset}/report_methods.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        version=VERSION,
    script:
        "../scripts/report_methods.py"


rule report_provenance:
    input:
        unpack(provenance_inputs),
    output:
        report(
            "results/{dataset}/report/provenance.html",
            category="4. Provenance",
            labels={"file": "config, commit, packages, checksums, backbone"},
            caption="../report/provenance.rst",
        ),
    log:
        "logs/{dataset}/report_provenance.log",
    benchmark:
        "benchmarks/{dataset}/report_provenance.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        config=lambda wc: json.dumps(config, sort_keys=True),
        commit=git_commit(),
        version=VERSION,
    script:
        "../scripts/report_provenance.py"
