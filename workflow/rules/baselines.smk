"""Baselines on the same split and metrics, fitted on train only (SPEC section 7)."""

BASELINE_SETTINGS = config["baselines"]
DETERMINISTIC_BASELINES = ["popularity", "itemknn", "ease"]


def baseline_settings(wildcards):
    """The baseline's config block plus the evaluation settings (a rerun trigger)."""
    name = wildcards.get("name", "multivae")
    return json.dumps({"settings": BASELINE_SETTINGS.get(name, {}), "top_k": config["evaluate"]["top_k"],
                       "batch_size": config["evaluate"]["batch_size"]}, sort_keys=True)


def baseline_runs(dataset):
    """Run folders of the configured baselines: `baselines/{name}`, `baselines/multivae-s{seed}`."""
    runs = []
    for name in BASELINE_SETTINGS["run"]:
        if name == "multivae":
            runs += [f"results/{dataset}/baselines/multivae-s{seed}" for seed in config["seeds"]]
        else:
            runs.append(f"results/{dataset}/baselines/{name}")
    return runs


def baseline_targets(dataset):
    return [f"{run}/metrics.json" for run in baseline_runs(dataset)]


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
    wildcard_constraints:
        name="|".join(DETERMINISTIC_BASELINES),
    params:
        settings=baseline_settings,
        seed=0,
        version=VERSION,
    log:
        "logs/{dataset}/baselines/{name}.log",
    benchmark:
        "benchmarks/{dataset}/baselines/{name}.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: int(BASELINE_SETTINGS.get("ease", {}).get("max_memory_gb", 8) * 1000 + 2000)
        if wc.name == "ease" else 4000,
    script:
        "../scripts/baseline.py"


rule multivae:
    input:
        interactions="results/{dataset}/processed/interactions.parquet",
        users="results/{dataset}/processed/users.parquet",
        catalog="results/{dataset}/processed/items.parquet",
    output:
        metrics="results/{dataset}/baselines/multivae-s{seed}/metrics.json",
        per_user="results/{dataset}/baselines/multivae-s{seed}/per_user.parquet",
        recommendations="results/{dataset}/baselines/multivae-s{seed}/recommendations.parquet",
        history="results/{dataset}/baselines/multivae-s{seed}/history.csv",
    wildcard_constraints:
        seed=r"\d+",
    params:
        settings=baseline_settings,
        seed=lambda wc: int(wc.seed),
        version=VERSION,
    log:
        "logs/{dataset}/baselines/multivae-s{seed}.log",
    benchmark:
        "benchmarks/{dataset}/baselines/multivae-s{seed}.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/baseline.py"
