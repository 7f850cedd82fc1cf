"""Training-free calibration of the emergent over-optimisation testbed
(conf/experiment/proxy_overoptimisation.yaml; docs/reproduction.md).

The population optimum of DPO on pairs labelled by Bradley-Terry on the proxy
at temperature tau is the exact tilt pi(y|x) proportional to pi_ref(y|x) *
exp(r_p(y) / (tau * beta)). The proxy is linear in letter counts and the
behaviour policy (which the SFT reference imitates) writes letters i.i.d. given
the prompt, so the tilt is per letter: q_beta(l|x) proportional to q(l|x)
exp(w_l / (tau beta)), its KL is exactly 8 x the per-letter KL, and gold
reward and gold win rate against a reference sample follow by sampling. No
training. Prints, per proxy size N, gold vs KL over a beta grid and the peak.

    python sweeps/proxy_calibration.py                       # N = 100, 300, 1000, 10000
    python sweeps/proxy_calibration.py --sizes 100 --penalty 0.5 --proxy-seed 1
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # gpo, as src/train.py finds it


import numpy as np  # noqa: E402

from gpo.data.sources import LetterCountProxy, ProxyPreferences, RepeatPenalisedCount  # noqa: E402


def tilt_curve(source: ProxyPreferences, betas, num_prompts: int = 512, samples: int = 8, seed: int = 0):
    """[(beta, KL, gold, gold stderr, win rate, win stderr)] of the exact per-letter tilt."""
    rng = np.random.default_rng(seed)
    prompts = source.evaluation_prompts(num_prompts)
    q = np.stack([source.letter_probabilities(p) for p in prompts])
    w = source.proxy.weights / source.reward_temperature
    length, letters = source.response_length, np.array(list(source.alphabet))

    def draw(probabilities):
        picks = [rng.choice(len(letters), size=(samples, length), p=row) for row in probabilities]
        return np.array([[source.gold_reward(x, "".join(letters[y])) for y in ys] for x, ys in zip(prompts, picks)])

    reference = draw(q)
    rows = []
    for beta in betas:
        logits = np.log(q) + w[None, :] / beta
        tilted = np.exp(logits - logits.max(1, keepdims=True))
        tilted /= tilted.sum(1, keepdims=True)
        kl = length * np.sum(tilted * np.log(tilted / q), 1).mean()
        gold = draw(tilted)
        wins = (gold > reference) + 0.5 * (gold == reference)  # one reference sample per policy sample, same prompt
        rows.append((beta, kl, gold.mean(), gold.std() / np.sqrt(gold.size), wins.mean(),
                     wins.std() / np.sqrt(wins.size)))
    return rows, reference.mean()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 10000])
    parser.add_argument("--penalty", type=float, default=1.0, help="gold: cost of a pair of identical letters")
    parser.add_argument("--proxy-seed", type=int, default=0)
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0, help="the policy's labels: BT on the proxy at this")
    parser.add_argument("--betas", type=float, nargs="+", default=list(2.0 ** np.arange(-3, 3.01, 0.5)))
    args = parser.parse_args()
    for size in args.sizes:
        source = ProxyPreferences(LetterCountProxy(num_pairs=size, seed=args.proxy_seed, ridge=args.ridge),
                                  gold_reward=RepeatPenalisedCount(penalty=args.penalty),
                                  reward_temperature=args.temperature)
        rows, reference_gold = tilt_curve(source, args.betas)
        weights = source.proxy.weights
        print(f"\nN = {size}: proxy weights {np.round(weights, 2).tolist()}; reference gold {reference_gold:.3f}")
        print("  beta     KL    gold (se)        win rate (se)")
        for beta, kl, gold, gold_se, win, win_se in rows:
            print(f"  {beta:6.3f} {kl:6.2f}  {gold:6.3f} ({gold_se:.3f})  {win:.3f} ({win_se:.3f})")
        peak = max(rows, key=lambda row: row[4])
        print(f"  peak win rate {peak[4]:.3f} at beta {peak[0]:.3f}, KL {peak[1]:.2f}")


if __name__ == "__main__":
    main()
