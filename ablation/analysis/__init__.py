"""Tools that work on stored checkpoints, without retraining: score functions chosen afterwards
(`rescore`), seed and snapshot ensembles (`ensemble`) and BatchNorm statistics modes (`bn_check`)."""
