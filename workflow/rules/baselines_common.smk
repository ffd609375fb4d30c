"""Helpers of baselines.smk and report.smk: run lists, settings, report targets."""


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



REPORT = config.get("report", {})


def reference_variant():
    """The method every other is tested against: `full`, else the first variant run."""
    ref = REPORT.get("reference", "full")
    return ref if ref in config["run_variants"] else config["run_variants"][0]


def variant_runs(dataset):
    return [(v, s, f"results/{dataset}/{v}-s{s}") for v in config["run_variants"] for s in config["seeds"]]


def run_records(wildcards):
    """Method, kind, seed, run folder and benchmark files of every run the summary covers."""
    d = wildcards.dataset
    recs = [{"method": v, "kind": "variant", "seed": s, "run_dir": run,
             "benchmarks": [f"benchmarks/{d}/{v}-s{s}/{stage}.tsv" for stage in ("pretrain", "finetune", "evaluate")]}
            for v, s, run in variant_runs(d)]
    for run in baseline_runs(d):
        name = run.rsplit("/", 1)[1]
        method, _, seed = name.partition("-s")
        recs.append({"method": method, "kind": "baseline", "seed": int(seed) if seed else None, "run_dir": run,
                     "benchmarks": [f"benchmarks/{d}/baselines/{name}.tsv"]})
    return json.dumps(recs)


def summary_inputs(wildcards):
    runs = [run for _, _, run in variant_runs(wildcards.dataset)] + baseline_runs(wildcards.dataset)
    return [f"{run}/{f}" for run in runs for f in ("metrics.json", "per_user.parquet")]


def curve_inputs(wildcards):
    """Per-epoch histories of one method over seeds (inside the training stage folders)."""
    d, m = wildcards.dataset, wildcards.method
    if m == "multivae":
        return [f"results/{d}/baselines/multivae-s{s}/history.csv" for s in config["seeds"]]
    return [f"results/{d}/{m}-s{s}/{stage}" for s in config["seeds"] for stage in ("pretrain", "finetune")]


def curve_methods():
    methods = list(config["run_variants"])
    return methods + (["multivae"] if "multivae" in BASELINE_SETTINGS["run"] else [])


def raw_files(wildcards):
    """The raw inputs whose checksums the provenance lists."""
    spec = DATASETS[wildcards.dataset]
    if spec["source"] == "local":
        return {"reviews": spec["reviews"], "catalog": spec["items"]}
    return {k: f"resources/raw/{wildcards.dataset}/{k}.json.gz" for k in ("reviews", "meta")}


def git_commit():
    from llm4rec.report import git_commit as _commit

    return _commit(workflow.basedir)


def report_targets(dataset):
    r = f"results/{dataset}/report"
    return [
        f"results/{dataset}/summary.csv",
        f"{r}/dataset.html",
        f"{r}/methods.svg",
        f"{r}/relation_bias.svg",
        f"{r}/provenance.html",
        *(f"{r}/curves/{m}.svg" for m in curve_methods()),
    ]
