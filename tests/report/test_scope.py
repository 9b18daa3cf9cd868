"""The scope table (sngrad.report.scope) and the reference list (sngrad.report.references)."""

from pathlib import Path

from sngrad.report import references, scope

PROFILE = {
    "profile": "toy", "datasets": ["mnist"], "optimizers": ["sgd"], "batch_sizes": [128],
    "data": {"val_fraction": 0.0833333, "train_size": 8000},
    "model": {"hidden": [64], "init_seed": 0},
    "train": {"epochs": 10, "seeds": [1, 2], "snapshot_every": 1},
}  # fmt: skip


def test_scale_matches_hand_counts():
    s = scope.scale(PROFILE, "mnist")
    assert s["parameters"] == 784 * 64 + 64 + 64 * 10 + 10  # 50,890
    assert s["train_examples"] == 8000
    assert s["steps_small"] == 10 * (8000 // 128) == 620
    forward = (2 * 784 * 64 + 64) + (2 * 64 * 10 + 10) + 64 + 4 * 10
    backward = 3 * 10 + 64 + (2 * 784 * 64 + 64) + (2 * 64 * 10 + 10) + 2 * 64 * 10
    step = 128 * (forward + backward) + 2 * 50890  # sgd: scale and add per parameter
    assert s["flops_run"] == 620 * step


def test_scope_against_the_seed_design():
    context = scope.report_context(PROFILE)
    assert context["available"]
    seed_params = 784 * 1024 + 1024 + 2 * (1024 * 1024 + 1024) + 1024 * 10 + 10
    row = next(r for r in context["rows"] if r["quantity"].startswith("parameters"))
    assert row["profile"] == "50,890" and row["seed"] == f"{seed_params:,}"
    assert context["ratio"]["epochs"] == "20" and context["ratio"]["train_examples"] == "6.75"
    assert "cifar10" in context["missing_datasets"]
    assert not scope.report_context({"profile": "bad"})["available"]


def test_every_cited_key_has_a_reference_and_no_heading_speaks_for_the_seed():
    texts = [p.read_text() for p in sorted(Path("paper/templates").glob("*.md.j2"))]
    assert references.unknown_keys(texts) == set()
    cited = set().union(*(references.cited_keys(t) for t in texts))
    # the related-work paragraph and the protocol cite what issue 34 asks for, and more
    assert {"Balles & Hennig, 2018", "Goodfellow, 2015", "Dangel et al., 2020",
            "Breiman et al., 1984", "Holm, 1979", "Yin et al., 2025"} <= cited
    headings = [line for t in texts for line in t.splitlines() if line.startswith("#")
                or line.startswith("**The seed")]
    assert not [h for h in headings if "as stated" in h or h.endswith("filled")]
    assert references.cited_keys("as shown (Balles & Hennig, 2018; Goodfellow,\n2015)") == {
        "Balles & Hennig, 2018", "Goodfellow, 2015"}
    assert references.unknown_keys(["(Nobody et al., 1999)"]) == {"Nobody et al., 1999"}
