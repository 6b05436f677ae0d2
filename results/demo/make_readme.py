"""Writes results/demo/README.md from the demo's measured files (no number typed by hand).
`make ship-demo` runs it after its timed `make demo`:

    python results/demo/make_readme.py <wall seconds> <cpu model> <cores> <student run dir>

It reads the rows that run wrote to results/demo/eval_results.json, which must be of
`results/demo/student` (the folder the timed run exported to), and the speed that
`benchmarks/bench_infer.py` measured (results/speed/seed-demo-mobilenetv3-small-fmnist.json) when
present. Without the run folder (gitignored) the run's steps, batch and τ_T come from the student's
entry in model_cards/models.json, which that run wrote.

The paper's baseline, the same student by MoCo-v2 alone, is recorded by `make demo-baseline`
(results/demo/moco_baseline/eval_results.json, its run's steps and batch in
results/demo/moco_baseline/run_summary.json); its row is shown only when it
was trained for at least the SEED student's steps at the same batch.
"""

import json
import sys
from pathlib import Path

here = Path(__file__).parent
wall, cpu, cores, run_dir = float(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
student = json.loads((here / "eval_results.json").read_text())
if not student or any(r["model"] != "results/demo/student" for r in student):
    sys.exit(
        f"{here / 'eval_results.json'} must hold rows of the shipped folder results/demo/student only: run `make ship-demo`."
    )
reference = json.loads(Path("results/teacher/eval_results.json").read_text())
rows = [r for r in reference if r["label_fraction"] == 1.0] + [
    r for r in student if r["label_fraction"] == 1.0
]
BASELINE = "results/demo/moco_baseline/student"
names = {
    "pretrained/fmnist-mocov2-resnet18": "MoCo-v2 teacher, ResNet-18 (shipped, recorded by `make teacher`)",
    "pixels": "raw pixels (recorded)",
    "pixels_centred": "centred pixels (recorded)",
}
if (run_dir / "trainer_state.json").is_file():
    trainer_state = json.loads((run_dir / "trainer_state.json").read_text())
    steps, batch = trainer_state.get("global_step"), trainer_state.get("train_batch_size")
    tau_t = json.loads((run_dir / "config.json").read_text())["teacher_temperature"]
else:
    manifest = json.loads(Path("model_cards/models.json").read_text())
    facts = next(e["facts"] for e in manifest if e["folder"] == "results/demo/student")
    steps, batch, tau_t = facts["steps"], facts["batch_size"], facts["teacher_temperature"]
baseline_file = Path("results/demo/moco_baseline/eval_results.json")
baseline_budget = None
if baseline_file.is_file():
    summary = json.loads((baseline_file.parent / "run_summary.json").read_text())
    baseline_budget = summary.get("steps"), summary.get("batch_size")
    if baseline_budget[0] is None or baseline_budget[0] < steps or baseline_budget[1] != batch:
        sys.exit(
            f"{baseline_file} was trained for {baseline_budget} (steps, batch), not at least the SEED student's "
            f"({steps}, {batch}): run `make demo-baseline` with the demo's DEMO_STUDENT_STEPS."
        )
    rows += [r for r in json.loads(baseline_file.read_text()) if r["label_fraction"] == 1.0]
    names[BASELINE] = (
        f"MoCo-v2 alone, MobileNetV3-Small ({baseline_budget[0]} steps × {baseline_budget[1]}; the paper's "
        "baseline, recorded by `make demo-baseline`), exported folder `results/demo/moco_baseline/student`"
    )
speed_file = Path("results/speed/seed-demo-mobilenetv3-small-fmnist.json")
speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
SPEED_RUNTIME = "ONNX Runtime fp32"  # one runtime for both models: the column compares the models
if speed:
    by_role = {r["role"]: r for r in speed["rows"] if r["runtime"] == SPEED_RUNTIME}
    roles = {"pretrained/fmnist-mocov2-resnet18": "teacher", "results/demo/student": "student"}
header = "| model | parameters | kNN top-1 (k=200, τ=0.07) | linear probe top-1 | kNN kept of the teacher's |"
if speed:
    header += f" CPU speed, {SPEED_RUNTIME}: batch-1 ms / batch-64 img/s |"
table = [header, "|" + " --- |" * (header.count("|") - 1)]
teacher_knn = next(r["knn_top1"] for r in rows if r["model"] == "pretrained/fmnist-mocov2-resnet18")
for r in rows:
    name = names.get(
        r["model"],
        f"SEED student, MobileNetV3-Small ({steps} steps × {batch}, τ_T {tau_t:g}), exported folder `{r['model']}`",
    )
    kept = r["knn_top1"] / teacher_knn if r["num_parameters"] else None
    line = f"| {name} | {r['num_parameters']:,} | {r['knn_top1']:.2f} | {r['linear_top1']:.2f} | {f'{kept:.1%}' if kept else '—'} |"
    if speed:
        t = by_role.get(roles.get(r["model"]))
        line += f" {t['batch1_ms']:.2f} / {t['batch64_img_s']:,.0f} |" if t else " — |"
    table.append(line)
by = {r["model"]: r for r in rows}
s = next(r for r in rows if r["model"] not in names)
against_pixels = s["knn_top1"] - by["pixels_centred"]["knn_top1"]
pixels_text = (
    f"The SEED student is {'above' if against_pixels > 0 else 'below'} centred pixels on kNN ({against_pixels:+.2f}) and "
    f"{'above' if s['linear_top1'] > by['pixels']['linear_top1'] else 'below'} pixels on the linear probe "
    f"({s['linear_top1'] - by['pixels']['linear_top1']:+.2f}): Fashion-MNIST's 28-px images are nearly separable as "
    "pixels, so a small student needs a strong teacher and a long run to pass them."
)
baseline_text = ""
if BASELINE in by:
    m = by[BASELINE]
    baseline_text = (
        f"SEED student − the same student by MoCo-v2 alone (the paper's claim; "
        f"{'equal budget' if baseline_budget[0] == steps else f'MoCo-v2 at {baseline_budget[0]} steps, SEED at {steps}'}): "
        f"**{s['knn_top1'] - m['knn_top1']:+.2f} kNN**, {s['linear_top1'] - m['linear_top1']:+.2f} linear.\n"
    )
speed_text = ""
if speed:
    ratio = speed["student_vs_teacher"][SPEED_RUNTIME]
    best = {
        role: max((r for r in speed["rows"] if r["role"] == role), key=lambda r: r["batch64_img_s"])
        for role in ("teacher", "student")
    }
    speed_text = (
        f"Speed: `{speed['command']}` on {speed['machine']['cpu']} ({speed['machine']['threads']} thread{'s' if speed['machine']['threads'] != 1 else ''}, "
        f"{speed['date']}; 1-min load average {speed['machine']['load_average']['before'][0]} before, "
        f"{speed['machine']['load_average']['after'][0]} after): with {SPEED_RUNTIME} the student "
        f"has {ratio['batch64_throughput_ratio']:.1f}× the teacher's batch-64 throughput and "
        f"{ratio['batch1_latency_ratio']:.1f}× lower batch-1 latency; fastest runtime of each: teacher "
        f"{best['teacher']['batch64_img_s']:,.0f} img/s ({best['teacher']['runtime']}), student "
        f"{best['student']['batch64_img_s']:,.0f} img/s ({best['student']['runtime']}). Every runtime: `{speed_file}`.\n"
    )
text = f"""# `make demo` on a {cores}-core CPU machine (no GPU)

Measured by `make ship-demo`: `make demo` from a fresh run folder (`{run_dir.parent}`, nothing resumed),
exporting and evaluating straight into this folder, after `make setup`, nothing else running:
**{int(wall // 60)} min {int(wall % 60)} s wall** on {cpu} ({cores} cores; bf16 teacher, fp32 student).
Fashion-MNIST test split (10,000 images), 60,000 labelled train images:

{chr(10).join(table)}

The students are evaluated from their exported timm folders with the preprocessing a Hub user gets.
{baseline_text}{pixels_text}
SEED student − teacher: {s["knn_top1"] - by["pretrained/fmnist-mocov2-resnet18"]["knn_top1"]:+.2f} kNN,
{s["linear_top1"] - by["pretrained/fmnist-mocov2-resnet18"]["linear_top1"]:+.2f} linear, with {s["num_parameters"] / by["pretrained/fmnist-mocov2-resnet18"]["num_parameters"]:.0%} of its parameters.
{speed_text}Files: `eval_results.json` (the student's rows, written by `examples/run_eval.py`), `student/` (the
exported student with its card; its `onnx/` graphs are not committed, `make onnx` rebuilds them; also `model_cards/seed-demo-mobilenetv3-small-fmnist.md`).
"""
(here / "README.md").write_text(text)
print(text)
