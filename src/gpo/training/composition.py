"""What a run composes (the loss, the axes beside it, the reference, the data)
and the one compatibility check over all of it, before any compute.

Each part checks the whole (`part.check(run)` with this object): a reference
that cannot serve the loss, an axis that needs a GPO family, pairs, a data
column or a reference, a TR-DPO sync on a cached reference, AOT on
length-grouped batches... A part looks at what the others *are* (a GPO family,
reference-free, a pair-weighting axis), never at their names; the config
choices in `names` only word the one-line error.
"""

from dataclasses import dataclass, field

from gpo.infra.errors import InputError
from gpo.losses import PairLogps, PreferenceLoss
from gpo.losses.aggregate import Aggregate, Mean
from gpo.losses.axes import Axis, HardLabels, NoMargin, NoWeighting
from gpo.losses.rho import Rho, Sum
from gpo.losses.schedules import BetaSchedule, Constant

# The axes' config groups, in the order the training step applies them (gpo.losses.axes).
AXES = ("rho", "margin", "labels", "weighting", "beta_schedule", "aggregate")


@dataclass
class Composition:
    loss: PreferenceLoss
    reference: object  # gpo.reference.Reference
    datamodule: object  # gpo.data.PreferenceDataModule
    lora: bool = False
    names: dict[str, str] = field(default_factory=dict)  # config group -> option chosen, for messages
    rho: Rho = field(default_factory=Sum)
    margin: Axis = field(default_factory=NoMargin)
    labels: Axis = field(default_factory=HardLabels)
    weighting: Axis = field(default_factory=NoWeighting)
    beta_schedule: BetaSchedule = field(default_factory=Constant)
    aggregate: Aggregate = field(default_factory=Mean)

    @property
    def axes(self) -> dict[str, Axis]:
        return {group: getattr(self, group) for group in AXES}

    @property
    def needs(self) -> frozenset[str]:
        """What the step computes beyond summed log-probs (gpo.losses.axes.Axis.needs)."""
        return frozenset().union(*(axis.needs for axis in self.axes.values()))

    def check(self) -> None:
        """Raise InputError (one line) if the parts cannot work together."""
        unpaired = getattr(self.datamodule, "unpaired", False)
        loss = self.names.get("loss", type(self.loss).__name__)
        if self.loss.inputs is PairLogps and unpaired:
            raise InputError(f"loss={loss} trains on preference pairs; the data are unpaired examples "
                             "(data.unpaired=true or an unpaired format): use loss=kto, or pairs")
        if self.loss.inputs is not PairLogps and not unpaired:
            raise InputError(f"loss={loss} trains on unpaired examples (a completion and a desirable/undesirable "
                             "label); the data are pairs: set data.unpaired=true to see each pair as two examples")
        self.reference.check(self)
        for axis in self.axes.values():
            axis.check(self)
