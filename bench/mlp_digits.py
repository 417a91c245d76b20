"""The equilibrium MLP trained by EP alone on scikit-learn's digits: accuracy and wall time.

64 inputs, 128 tanh hidden units, 10 linear outputs; centred EP (beta 0.5, T2 20, eps 0.5), AdamW,
15 epochs of batch 32, one thread (`analog_ep.train.classify.digits_recipe`; tests/test_mlp.py
checks the accuracy).

    python bench/mlp_digits.py

Prints one JSON object: test_accuracy, epochs, steps, wall_s.
"""
from __future__ import annotations

import json
import time

from analog_ep.data.digits import DigitsData, DigitsDataConfig
from analog_ep.model.mlp import EquilibriumMLP, MLPConfig
from analog_ep.train.classify import digits_recipe, train_classifier


def main() -> dict:
    data = DigitsData.from_config(DigitsDataConfig())
    model = EquilibriumMLP(MLPConfig(hidden=(128,), activation="tanh", init_scale=1.0, seed=0))
    start = time.perf_counter()
    history = train_classifier(model, data, **digits_recipe())
    report = {"test_accuracy": history.final.test_accuracy, "epochs": len(history.epochs), "steps": history.steps,
              "wall_s": time.perf_counter() - start}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
