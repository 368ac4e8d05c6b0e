"""What `imgclf robustness` measured (robustness.json), as a value the report, compare and the study read."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from imgclf.evaluate.results import Result


@dataclass(frozen=True)
class CorruptionScores:
    """Accuracy under one corruption at each severity."""

    levels: list[float]  # the corruption's level at severities 1..5
    accuracy: list[float]  # at severities 1..5
    mean_accuracy: float
    relative_degradation: float | None  # 1 - mean / clean; None when the clean accuracy is 0


@dataclass(frozen=True)
class AttackSettings:
    """How the attacks were run."""

    steps: int
    step_size: float | str  # a number, or the rule used when none was given
    random_start: bool
    norm: str
    batch_size: int


@dataclass(frozen=True)
class RobustnessHeadline(Result):
    """The two robustness numbers a leaderboard shows: mean corruption accuracy and PGD at the largest eps."""

    mean_corruption_accuracy: float | None
    pgd_eps: float | None
    pgd_accuracy: float | None


@dataclass(frozen=True)
class RobustnessReport(Result):
    """Accuracy of one model on clean, corrupted and attacked images, with what was measured and how."""

    run: str
    model_file: str
    model: str
    sha256: str  # of the weights measured
    dataset: str
    split: str
    images: int
    seed: int
    created: str
    clean_accuracy: float
    corruptions: dict[str, CorruptionScores]
    mean_corruption_accuracy: float | None  # None when no corruption was measured
    relative_degradation: float | None
    attacks: dict[str, dict[str, float]]  # attack -> eps as written (e.g. "0.1") -> accuracy
    attack_settings: AttackSettings

    @property
    def headline(self) -> RobustnessHeadline:
        """Mean corruption accuracy and PGD accuracy at the largest eps measured (None where not measured)."""
        pgd = self.attacks.get("pgd", {})
        largest = max(pgd, key=float, default=None)
        return RobustnessHeadline(self.mean_corruption_accuracy, None if largest is None else float(largest),
                                  None if largest is None else pgd[largest])

    def to_json(self) -> dict:
        """The robustness.json object (the attack settings sit beside the attacks, under "settings")."""
        data = asdict(self)
        del data["attack_settings"]
        data["attacks"] = {"settings": asdict(self.attack_settings),
                           **{name: {"accuracy_by_eps": accs} for name, accs in self.attacks.items()}}
        return data

    @classmethod
    def from_json(cls, data: dict) -> RobustnessReport:
        """A report from the robustness.json object (keys this version does not know, e.g. a headline, ignored)."""
        attacks = {name: a for name, a in data["attacks"].items() if name != "settings"}
        return super().from_json({**data, "corruptions": {name: CorruptionScores(**c)
                                                          for name, c in data["corruptions"].items()},
                                  "attacks": {name: dict(a["accuracy_by_eps"]) for name, a in attacks.items()},
                                  "attack_settings": AttackSettings(**data["attacks"]["settings"])})
