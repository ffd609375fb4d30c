"""Data stages: download, convert (or import local data), preprocess (docs/method.md sections 1-2)."""


localrules:
    download,


rule download:
    input:
        download_inputs,
    output:
        reviews="resources/raw/{dataset}/reviews.json.gz",
        meta="resources/raw/{dataset}/meta.json.gz",
        record="resources/raw/{dataset}/download.json",
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    wildcard_constraints:
        dataset=_alternatives(RAW_DATASETS),
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    params:
        download=download_params,
        version=VERSION,
    script:
        "../scripts/download.py"


rule convert:
    input:
        reviews="resources/raw/{dataset}/reviews.json.gz",
        meta="resources/raw/{dataset}/meta.json.gz",
    output:
        reviews="results/{dataset}/interim/reviews.parquet",
        catalog="results/{dataset}/interim/items.parquet",
        rejects="results/{dataset}/interim/rejects.jsonl",
        report="results/{dataset}/interim/convert.json",
    log:
        "logs/{dataset}/convert.log",
    benchmark:
        "benchmarks/{dataset}/convert.tsv"
    wildcard_constraints:
        dataset=_alternatives(RAW_DATASETS),
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        convert=config["convert"],
        version=VERSION,
    script:
        "../scripts/convert.py"


rule import_local:
    input:
        unpack(local_inputs),
    output:
        reviews="results/{dataset}/interim/reviews.parquet",
        catalog="results/{dataset}/interim/items.parquet",
        rejects="results/{dataset}/interim/rejects.jsonl",
        report="results/{dataset}/interim/convert.json",
    log:
        "logs/{dataset}/import_local.log",
    benchmark:
        "benchmarks/{dataset}/import_local.tsv"
    wildcard_constraints:
        dataset=_alternatives(LOCAL_DATASETS),
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        convert=config["convert"],
        version=VERSION,
    script:
        "../scripts/import_local.py"


rule preprocess:
    input:
        reviews="results/{dataset}/interim/reviews.parquet",
        catalog="results/{dataset}/interim/items.parquet",
    output:
        users="results/{dataset}/processed/users.parquet",
        catalog="results/{dataset}/processed/items.parquet",
        interactions="results/{dataset}/processed/interactions.parquet",
        stats="results/{dataset}/processed/stats.json",
    log:
        "logs/{dataset}/preprocess.log",
    benchmark:
        "benchmarks/{dataset}/preprocess.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        preprocess=config["preprocess"],
        seed=config["data_seed"],
        version=VERSION,
    script:
        "../scripts/preprocess.py"
