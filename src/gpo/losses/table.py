"""The loss table: every conf/loss entry, its class, its loss per pair,
whether it needs the reference and, for GPO families, f'(0), f''(0), the
regularisation scale and the link, computed by the code. Printed by
`python src/losses.py`; the README and docs/losses.md hold it between two
markers, rewritten by `python src/losses.py --write README.md docs/losses.md`
(tests/test_docs.py fails when they drift from the code).

A new conf/loss/*.yaml gets its row with no edit here; its class says its
formula (`formula`, `link_formula`: gpo.losses.base).
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig

from gpo.infra.config import group_options, instantiate
from gpo.losses.base import LINK_RANGE, GPOLoss

PROBABILITIES = (0.6, 0.75, 0.9)
COLUMNS = ["config", "class", "loss per pair", "reference", "f'(0)", "f''(0)", "scale f''(0)/abs(f'(0))",
           "link t*(p)", "t*(" + "), t*(".join(f"{p:g}" for p in PROBABILITIES) + ")"]
NOTATION = ("t = beta * rho; l_w = log pi(y_w|x) - log pi_ref(y_w|x), l_l likewise, rho = l_w - l_l; "
            "a_w = log pi(y_w|x) / len(y_w) (policy only); link t*(p) = argmin_t p f(t) + (1-p) f(-t)")
BEGIN = "<!-- loss table: generated from conf/loss by `python src/losses.py --write <file>`; do not edit by hand -->"
END = "<!-- end of the loss table -->"


def number(value: float) -> str:
    """4 significant digits; a link past half the search range as +-inf: there
    the objective has no finite minimiser (it keeps decreasing, or flattens
    out towards infinity, as robust DPO's at p = 1 - eps, where the numerical
    argmin is rounding noise). Finite links of the table's p are below 6."""
    if abs(value) > LINK_RANGE / 2:
        return "+inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def parameters(config: DictConfig) -> str:
    """The config's settings in a few words: `eps=0.1`; a weighted mixture
    (terms: [{loss, weight}]) as `0.8 Logistic + 0.2 BCO`."""
    words = []
    for key, value in config.items():
        if key == "_target_":
            continue
        if isinstance(value, ListConfig) and all(isinstance(t, DictConfig) and "loss" in t for t in value):
            words.append(" + ".join(f"{t.get('weight', 1.0)} {t.loss._target_.rsplit('.', 1)[-1]}" for t in value))
        else:
            words.append(f"{key}={value}")
    return ", ".join(words)


def row(name: str, config: DictConfig) -> list[str]:
    loss = instantiate(config)
    cls = type(loss)
    settings = parameters(config)
    cells = [f"`{name}`", f"`{cls.__name__}`" + (f" ({settings})" if settings else ""),
             cls.formula or f"see `{cls.__module__}.{cls.__name__}`", "yes" if loss.needs_reference else "**no**"]
    if isinstance(loss, GPOLoss):
        theory = loss.theory()
        cells += [number(theory["df0"]), number(theory["d2f0"]), number(theory["regularisation_scale"]),
                  cls.link_formula or "none (numerical)", ", ".join(number(t) for t in loss.link(PROBABILITIES))]
    else:
        cells += ["-"] * 5
    return cells


def rows() -> list[list[str]]:
    """One row per conf/loss option, sorted by name."""
    return [row(name, loss_config(config)) for name, config in group_options("loss").items()]


def loss_config(config: DictConfig) -> DictConfig:
    """The loss of an option; a `# @package _global_` option (kto: a loss and
    the data it needs) holds it under `loss`."""
    return config.loss if "loss" in config and "_target_" not in config else config


def markdown() -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows()]
    return "\n".join(lines)


def block(table: str | None = None) -> str:
    """The table between its markers, as the docs hold it."""
    return f"{BEGIN}\n{table or markdown()}\n{END}"


def written_table(text: str) -> str | None:
    """The table a document holds between the markers (None without them)."""
    found = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, flags=re.S)
    return found.group(1) if found else None


def rewrite(text: str, table: str | None = None) -> str:
    """`text` with the table between its markers replaced by the current one."""
    if written_table(text) is None:
        raise ValueError(f"no loss table markers ({BEGIN!r} ... {END!r})")
    table = table or markdown()
    return re.sub(re.escape(BEGIN) + r"\n.*?\n" + re.escape(END), lambda _: block(table), text, flags=re.S)

