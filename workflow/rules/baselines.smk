"""Baselines on the same split and metrics, fitted on train only (docs/method.md 7.5)."""

from llm4rec.core.memory import ease_mem_mb


rule baseline:
    input:
        interactions="results/{dataset}/processed/interactions.parquet",
        users="results/{dataset}/processed/users.parquet",
        catalog="results/{dataset}/processed/items.parquet",
    output:
        metrics="results/{dataset}/baselines/{name}/metrics.json",
        per_user="results/{dataset}/baselines/{name}/per_user.parquet",
        recommendations="results/{dataset}/baselines/{name}/recommendations.parquet",
        history="results/{dataset}/baselines/{name}/history.csv",
    log:
        "logs/{dataset}/baselines/{name}.log",
    benchmark:
        "benchmarks/{dataset}/baselines/{name}.tsv"
    wildcard_constraints:
        name="|".join(DETERMINISTIC_BASELINES),
    # Early: should EASE's memory not suffice, its check fails before the training jobs ran.
    priority: 10
    conda:
        "../../envs/llm4rec.yaml"
    # EASE's Cholesky inverses (n^3 flops per lambda) are the one baseline step that scales
    # with cores; the rest is single-threaded work.
    threads: lambda wc: 2 if wc.name == "ease" else 1
    # EASE: the configured limit, or with `auto` what the catalog needs (once preprocessed)
    # plus 2 GB (llm4rec.core.memory.ease_mem_mb).
    resources:
        mem_mb=lambda wc: (
            ease_mem_mb(
                BASELINE_SETTINGS["ease"]["max_memory_gb"],
                f"results/{wc.dataset}/processed/stats.json",
            )
            if wc.name == "ease"
            else 4000
        ),
    params:
        settings=baseline_settings,
        seed=0,
        version=VERSION,
    script:
        "../scripts/baseline.py"


use rule baseline as multivae with:
    output:
        metrics="results/{dataset}/baselines/multivae-s{seed}/metrics.json",
        per_user="results/{dataset}/baselines/multivae-s{seed}/per_user.parquet",
        recommendations="results/{dataset}/baselines/multivae-s{seed}/recommendations.parquet",
        history="results/{dataset}/baselines/multivae-s{seed}/history.csv",
    log:
        "logs/{dataset}/baselines/multivae-s{seed}.log",
    benchmark:
        "benchmarks/{dataset}/baselines/multivae-s{seed}.tsv"
    wildcard_constraints:
        seed=r"\d+",
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=baseline_settings,
        seed=lambda wc: int(wc.seed),
        version=VERSION,
