"""Helpers shared by the rules: dataset look-up, paths, params."""

import json

VERSION = llm4rec.__version__
DATASET = config["dataset"]
DATASETS = config["datasets"]

LOCAL_DATASETS = [name for name, d in DATASETS.items() if d["source"] == "local"]
RAW_DATASETS = [name for name, d in DATASETS.items() if d["source"] != "local"]


def _alternatives(names):
    """A wildcard regex matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def dataset_spec(wildcards):
    return DATASETS[wildcards.dataset]


def download_params(wildcards):
    """URLs, expected checksums and retry settings of one dataset, for the download rule."""
    spec = DATASETS[wildcards.dataset]
    from llm4rec.download import source_urls

    if spec["source"] == "demo":
        # A path relative to the working directory (made a file:// URL by the script), so
        # that moving the checkout changes no params.
        urls = {k: f"resources/demo/{k}.json.gz" for k in ("reviews", "meta")}
    else:
        urls = source_urls(spec["source"], spec.get("category"), config["url_templates"],
                           {k: spec[k] for k in ("reviews", "meta") if k in spec})
    return {
        "urls": urls,
        "sha256": {k: spec.get(f"{k}_sha256") for k in ("reviews", "meta")},
        "size": {k: spec.get(f"{k}_size") for k in ("reviews", "meta")},
        **config["download"],
    }


def download_inputs(wildcards):
    """The committed demo files, so that a change to them reruns the download."""
    if DATASETS[wildcards.dataset]["source"] == "demo":
        return [f"resources/demo/{k}.json.gz" for k in ("reviews", "meta")]
    return []


def local_inputs(wildcards):
    spec = DATASETS[wildcards.dataset]
    return {"reviews": spec["reviews"], "catalog": spec["items"]}




VARIANTS = config["variants"]
RUN = "results/{dataset}/{variant}-s{seed}"


def model_settings(variant):
    """The `model` block with the variant's overrides applied."""
    return {**config["model"], **VARIANTS[variant]}


def run_settings(wildcards):
    """Every setting a training or evaluation job reads, as one JSON string (a rerun trigger)."""
    return json.dumps({
        "seed": int(wildcards.seed),
        "model": model_settings(wildcards.variant),
        "pretrain": config["pretrain"],
        "finetune": config["finetune"],
        "evaluate": config["evaluate"],
        "data_seed": config["data_seed"],
    }, sort_keys=True)


def tokenizer_input(wildcards):
    """Only a backbone trained from scratch has a tokenizer trained on the dataset."""
    return f"results/{wildcards.dataset}/tokenizer" if config["model"]["backbone"] == "tiny" else []


def launch(script):
    """`accelerate launch` with one process per GPU of the job (workflow/scripts/launch.sh).

    launch.sh gets the job's `gpu` resource as the scheduler sees it (so a profile's or the
    command line's `--set-resources pretrain:gpu=4` changes both the request and the process
    count) and `launch.num_processes`, the process count of a job without GPUs.
    `launch.mixed_precision` (accelerate's) is passed, quoted, only when it is not "no", so
    that the default command is the one of runs made before the setting existed.

    The scripts' folder comes from $LLM4REC_SCRIPTS (set in the Snakefile), so the shell
    command holds no absolute path and moving the checkout does not count as a code change.
    """
    import shlex

    mixed = config["launch"].get("mixed_precision", "no")
    mixed = "no" if mixed is False else str(mixed)  # YAML reads a bare `no` as false
    flag = "" if mixed == "no" else "--mixed_precision " + shlex.quote(mixed) + " "
    return f'bash "$LLM4REC_SCRIPTS/launch.sh" {flag}{{resources.gpu:q}} {{params.cpu_processes:q}} "$LLM4REC_SCRIPTS/{script}"'


def all_targets():
    d = f"results/{DATASET}"
    return [f"{d}/processed/stats.json", f"{d}/graph/stats.json", *run_targets(DATASET),
            *baseline_targets(DATASET), *report_targets(DATASET)]


def run_targets(dataset):
    return [
        f"results/{dataset}/{variant}-s{seed}/metrics.json"
        for variant in config["run_variants"]
        for seed in config["seeds"]
    ]
