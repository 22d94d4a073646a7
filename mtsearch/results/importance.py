"""Which searched keys mattered: Optuna's parameter importances over a study's finished trials."""

from __future__ import annotations

from dataclasses import dataclass

from mtsearch.results.report import Study

MIN_TRIALS_FOR_IMPORTANCE = 4
IMPORTANCE_EVALUATOR = "PED-ANOVA"


@dataclass
class Importances:
    """Optuna's PED-ANOVA importances (normalised to sum 1), or why there are none.

    PED-ANOVA is Optuna 5's default evaluator and needs no scikit-learn (fANOVA does)."""

    values: dict[str, float]
    completed_trials: int
    evaluator: str
    reason: str | None = None


def param_importances(study: Study) -> Importances:
    """Importances of the searched keys from `optuna.db`, over the study's completed trials.

    Fewer than MIN_TRIALS_FOR_IMPORTANCE completed trials give no numbers (with the reason): a
    forest fitted on two or three points ranks parameters by noise.
    """
    db = study.path / "optuna.db"
    if study.space.scheduler.population_based:
        return Importances({}, 0, IMPORTANCE_EVALUATOR, "a population-based search samples no Optuna study: "
                           "its members are a Sobol design whose values change as they copy each other "
                           "(see lineage.parquet and `mtsearch plot`'s schedule.png)")
    if not db.exists():
        return Importances({}, 0, IMPORTANCE_EVALUATOR, f"no Optuna study at {db}")
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = f"sqlite:///{db.resolve()}"
    try:
        names = optuna.get_all_study_names(storage=storage_url)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign sqlite file: say so, don't crash
        return Importances({}, 0, IMPORTANCE_EVALUATOR, f"cannot read {db}: {exc}")
    if not names:
        return Importances({}, 0, IMPORTANCE_EVALUATOR, f"{db} holds no study")
    name = study.name if study.name in names else names[-1]
    ostudy = optuna.load_study(study_name=name, storage=storage_url)
    completed = [
        t
        for t in ostudy.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
    ]
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importances(
            {},
            len(completed),
            IMPORTANCE_EVALUATOR,
            f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials (has {len(completed)})",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna flags the evaluator as experimental
        raw = optuna.importance.get_param_importances(
            ostudy, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
    values = {key.replace("/", "."): float(v) for key, v in raw.items()}
    return Importances(values, len(completed), IMPORTANCE_EVALUATOR)
