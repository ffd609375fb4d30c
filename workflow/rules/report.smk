"""Summary over methods and seeds, figures and provenance for `snakemake --report` (issue 6)."""

REPORT = config.get("report", {})
REPORT_DIR = "results/{dataset}/report"


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
        return {"reviews": spec["reviews"], "items": spec["items"]}
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
        display=REPORT_DIR + "/summary_table.csv",
        html=report(
            REPORT_DIR + "/summary.html",
            category="2. Results",
            labels={"table": "methods: mean ± std, time, p-value"},
            caption="../report/summary.rst",
        ),
    params:
        records=run_records,
        reference=reference_variant(),
        metric=REPORT.get("test_metric", "Recall@20"),
        version=VERSION,
    log:
        "logs/{dataset}/summary.log",
    benchmark:
        "benchmarks/{dataset}/summary.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/summary.py"


rule report_dataset:
    input:
        processed="results/{dataset}/processed/stats.json",
        graph="results/{dataset}/graph/stats.json",
    output:
        report(
            REPORT_DIR + "/dataset.html",
            category="1. Data",
            labels={"figure": "dataset statistics"},
            caption="../report/dataset.rst",
        ),
    params:
        version=VERSION,
    log:
        "logs/{dataset}/report_dataset.log",
    benchmark:
        "benchmarks/{dataset}/report_dataset.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
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
            REPORT_DIR + "/relation_bias.svg",
            category="1. Data",
            labels={"figure": "relation bias of a second-order prompt"},
            caption="../report/relation_bias.rst",
        ),
    params:
        max_entities=REPORT.get("heatmap_max_entities", 12),
        version=VERSION,
    log:
        "logs/{dataset}/report_bias.log",
    benchmark:
        "benchmarks/{dataset}/report_bias.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/report_bias.py"


rule report_curves:
    input:
        curve_inputs,
    output:
        report(
            REPORT_DIR + "/curves/{method}.svg",
            category="4. Training curves",
            subcategory="{method}",
            labels={"method": "{method}", "file": "curves"},
            caption="../report/curves.rst",
        ),
    params:
        seeds=config["seeds"],
        version=VERSION,
    log:
        "logs/{dataset}/report_curves_{method}.log",
    benchmark:
        "benchmarks/{dataset}/report_curves_{method}.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/report_curves.py"


rule report_methods:
    input:
        summary="results/{dataset}/summary.csv",
        methods="results/{dataset}/summary_methods.csv",
    output:
        report(
            REPORT_DIR + "/methods.svg",
            category="2. Results",
            labels={"table": "bar chart (mean ± std over seeds)"},
            caption="../report/methods.rst",
        ),
    params:
        version=VERSION,
    log:
        "logs/{dataset}/report_methods.log",
    benchmark:
        "benchmarks/{dataset}/report_methods.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/report_methods.py"


rule report_provenance:
    input:
        unpack(raw_files),
    output:
        report(
            REPORT_DIR + "/provenance.html",
            category="5. Provenance",
            labels={"file": "config, commit, packages, checksums"},
            caption="../report/provenance.rst",
        ),
    params:
        config=lambda wc: json.dumps(config, sort_keys=True),
        commit=git_commit(),
        version=VERSION,
    log:
        "logs/{dataset}/report_provenance.log",
    benchmark:
        "benchmarks/{dataset}/report_provenance.tsv"
    conda:
        "../../envs/llm4rec.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/report_provenance.py"
