"""Evaluation harness: the CVPR 2025 interactive protocol (a box, then five simulated clicks) and its metrics.

Modules: ``cases`` (loading, boxes), ``click_rule`` (the simulated user), ``metrics`` (DSC, NSD, AUC, runtime
rule), ``backends`` (in-process predictor, server), ``baselines`` (box fill, random walker), ``runner`` (the
protocol), ``click_contract`` (clicks obeyed, region fixed, object size groups), ``report`` (cases.csv,
objects.csv, summary.json, summary.md, dsc_per_round.png, click_contract.png).

    refs = find_cases("../shared/data", split="dev")
    results = evaluate([PredictorMethod(predictor, "both"), RandomWalkerMethod()], refs)
    write_reports(results, "runs/dev")

or ``python -m evaluation --data ../shared/data --split dev --out runs/dev``. Submodules are imported on use
so that, e.g., the click rule does not pull in torch.
"""
