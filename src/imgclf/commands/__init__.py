"""The `imgclf` commands: one module per command or group, each with its add_parser beside its handlers."""

from imgclf.commands import (
    config,
    cv,
    data,
    evaluate,
    explain,
    export,
    feedback,
    models,
    predict,
    retrain,
    robustness,
    runs,
    serve,
    study,
    summary,
    train,
    tune,
)

COMMANDS = (data, summary, train, tune, evaluate, runs, cv, export, explain, robustness, predict, serve, feedback,
            retrain, study, config, models)  # in the order `imgclf --help` lists them
