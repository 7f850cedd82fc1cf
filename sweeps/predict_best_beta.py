"""Predictions of every GPO family's best beta relative to IPO's, from the data
alone (no training): the Taylor, link and projected-link predictors of
gpo.report.theory, computed from the same data summaries the runs will write.

For each seed, the experiment's data module is built as a run builds it (the
seed redraws the pairs) and its summary read; the predictions pool them as
`python src/report.py` pools the runs' summaries. Also printed: the projected
ratio at other KLs (how much the matching point matters) and each family's
predicted best beta (where its grid should be centred).

    python sweeps/predict_best_beta.py experiment=proxy_overoptimisation data.source.proxy.num_pairs=100
    python sweeps/predict_best_beta.py experiment=proxy_overoptimisation data.source.reward_temperature=2 \
        --seeds 1 2 3 --losses ipo slic
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # gpo, as src/train.py finds it


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import gpo.config  # noqa: F401  (registers the config resolvers)
from gpo import console  # noqa: E402
from gpo.models import char_tokenizer  # noqa: E402
from gpo.report.theory import (  # noqa: E402
    best_kl,
    beta_at_kl,
    filled,
    pooled_label_features,
    predictions,
    projected_link,
    taylor_ratio,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
FAMILIES = ["dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage"]


def run_rows(overrides: list[str], seeds: list[int], losses: list[str]) -> pd.DataFrame:
    """One row per (family, seed), with what a run's summary gives the report."""
    rows = []
    for seed in seeds:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"seed={seed}"])
        datamodule = instantiate(cfg.data, tokenizer=char_tokenizer())
        datamodule.setup()
        summary = datamodule.summary()
        for name in losses:
            config = OmegaConf.to_container(OmegaConf.load(CONF / "loss" / f"{name}.yaml"))
            loss = instantiate(config)
            rows.append({"loss": name, "beta": 1.0, "seed": seed, "status": "finished", "loss_config": config,
                         "regularisation_scale": loss.regularisation_scale,
                         "preference_probabilities": summary["preference_probabilities"],
                         "label_features": summary["label_features"]})
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--losses", nargs="+", default=FAMILIES)
    parser.add_argument("--reference", default="ipo")
    args = parser.parse_args()
    console.configure()  # no progress bars or library chatter around the table
    runs = run_rows(args.overrides, args.seeds, args.losses)
    table = predictions(runs, args.reference).set_index("loss")
    features = pooled_label_features(runs)
    reference = np.atleast_2d(np.asarray(features["reference"], float))
    gold, bins = filled(features["gold"]), reference.shape[1]
    configs = dict(zip(runs["loss"], runs["loss_config"]))
    links = {name: projected_link(instantiate(configs[name]), features["pairs"], bins) for name in args.losses}
    kl_star = best_kl(links[args.reference], reference, gold)
    beta_ref = beta_at_kl(links[args.reference], kl_star, reference)
    print(f"{' '.join(args.overrides)}; seeds {args.seeds[0]}..{args.seeds[-1]}")
    print(f"predicted best KL of {args.reference}: {kl_star:.3f} nats, at beta {beta_ref:.4f}\n")
    kls = (0.5, 1.0, 2.0, 3.0)
    header = "| family | Taylor | link | projected link | projected at KL " + " / ".join(map(str, kls))
    print(header + " | predicted best beta (projected) |\n|---|---|---|---|---|---|")
    for name in args.losses:
        row = table.loc[name]
        at = [beta_at_kl(links[name], kl, reference) / beta_at_kl(links[args.reference], kl, reference) for kl in kls]
        taylor = taylor_ratio(row["regularisation_scale"], table.loc[args.reference, "regularisation_scale"])
        print(f"| {name} | {taylor:.3f} | {row['link_ratio']:.3f} | {row['projected_link_ratio']:.3f} | "
              + " / ".join(f"{a:.3f}" for a in at) + f" | {beta_ref * row['projected_link_ratio']:.4f} |")


if __name__ == "__main__":
    main()
