"""Graph stages: relation index over train edges, second-order groups (docs/method.md section 3)."""


rule relation_matrix:
    input:
        users="results/{dataset}/processed/users.parquet",
        catalog="results/{dataset}/processed/items.parquet",
        interactions="results/{dataset}/processed/interactions.parquet",
    output:
        index=directory("results/{dataset}/graph/relation"),
        stats="results/{dataset}/graph/stats.json",
    log:
        "logs/{dataset}/relation_matrix.log",
    benchmark:
        "benchmarks/{dataset}/relation_matrix.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        graph=config["graph"],
        seed=config["data_seed"],
        version=VERSION,
    script:
        "../scripts/relation_matrix.py"


rule second_order:
    input:
        catalog="results/{dataset}/processed/items.parquet",
    output:
        groups="results/{dataset}/graph/second_order.parquet",
    log:
        "logs/{dataset}/second_order.log",
    benchmark:
        "benchmarks/{dataset}/second_order.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        second_order=config["second_order"],
        seed=config["data_seed"],
        version=VERSION,
    script:
        "../scripts/second_order.py"
