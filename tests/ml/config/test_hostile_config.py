"""Config values out of range, as a careless or hostile user types them: one line naming the key and
what is valid, exit code 2, nothing written under NEURACORE_HOME; sizes that cannot fit in memory
are refused before anything is allocated."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from neuracore.ml.core.errors import ConfigError
from tests.conftest import FAST, run_cli
from tests.ml.config.test_cli_errors import error_line

DP = ["algorithm=diffusion_policy", "dataset_name=demo", "batch_size=4", "num_workers=0",
      "algorithm.use_pretrained_weights=false"]
ACT = ["algorithm=act", "dataset_name=demo", "batch_size=4", "num_workers=0"]

# (id, args, substrings of the one error line)
CASES = [
    ("max_grad_norm_negative", FAST + ["training.max_grad_norm=-1"], ["training.max_grad_norm=-1.0", "must be > 0", "null"]),
    ("max_grad_norm_zero", FAST + ["training.max_grad_norm=0"], ["training.max_grad_norm=0", "must be > 0"]),
    ("lr_negative", FAST + ["algorithm.lr=-1"], ["algorithm.lr=-1.0", "must be > 0"]),
    ("lr_nan", FAST + ["algorithm.lr=nan"], ["algorithm.lr=nan", "finite"]),
    ("lr_inf", FAST + ["algorithm.lr=inf"], ["algorithm.lr=inf", "finite"]),
    ("weight_decay_negative", FAST + ["algorithm.weight_decay=-0.1"], ["algorithm.weight_decay=-0.1", "must be >= 0"]),
    ("seed_negative", FAST + ["seed=-1"], ["seed=-1", "[0, 2**32 - 1]"]),
    ("seed_too_large", FAST + ["seed=4294967296"], ["seed=4294967296", "[0, 2**32 - 1]"]),
    ("hidden_dim_negative", FAST + ["algorithm.hidden_dim=-1"], ["algorithm.hidden_dim=-1", "must be in [1, 65536]"]),
    ("hidden_dim_absurd", FAST + ["algorithm.hidden_dim=1000000000"], ["algorithm.hidden_dim=1000000000", "[1, 65536]"]),
    ("num_layers_zero", FAST + ["algorithm.num_layers=0"], ["algorithm.num_layers=0", "[1, 1024]"]),
    ("horizon_negative", FAST + ["output_prediction_horizon=-5"], ["output_prediction_horizon=-5", "must be >= 1"]),
    ("horizon_absurd", FAST + ["output_prediction_horizon=10000000"], ["output_prediction_horizon=10000000", "<= 100000"]),
    ("num_workers_negative", FAST + ["num_workers=-1"], ["num_workers=-1", "must be >= 0"]),
    ("batch_size_zero", FAST + ["batch_size=0"], ["batch_size=0", "positive integer or auto"]),
    ("batch_size_absurd", FAST + ["batch_size=100000000"], ["batch_size=100000000", "<= 1048576"]),
    ("validation_split_nan", FAST + ["validation_split=nan"], ["validation_split=nan", "finite"]),
    ("autotune_budget_zero", FAST + ["autotune.cpu_time_budget_s=0"], ["autotune.cpu_time_budget_s=0.0", "> 0"]),
    ("ema_decay_one", FAST + ["ema.decay=1.0"], ["ema.decay=1.0", "(0, 1)"]),
    ("lora_dropout_one", FAST + ["lora.rank=4", "lora.dropout=1.0"], ["lora.dropout=1.0", "[0, 1)"]),
    ("monitor_fraction_zero", FAST + ["memory_monitor.gpu_fraction=0"], ["memory_monitor.gpu_fraction=0.0", "(0, 1]"]),
    ("act_dropout_above_one", ACT + ["algorithm.dropout=1.5"], ["algorithm.dropout=1.5", "[0, 1)"]),
    ("dp_list_element_negative", DP + ["algorithm.unet_down_dims=[64,-1]"],
     ["algorithm.unet_down_dims=[64, -1]", "[1, 65536] (each element)"]),
    ("dp_crop_ratio_zero", DP + ["algorithm.crop_ratio=0"], ["algorithm.crop_ratio=0.0", "(0, 1]"]),
    ("dp_betas_out_of_range", DP + ["algorithm.optimizer_betas=[0.9,1.0]"], ["algorithm.optimizer_betas", "[0, 1)"]),
]


@pytest.mark.parametrize("args,contains", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_out_of_range_values_are_one_line_before_anything_starts(
    home: Path, args: list[str], contains: list[str], capsys: pytest.CaptureFixture
) -> None:
    from neuracore.ml.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("neuracore: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for text in contains:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert sorted(p.name for p in home.iterdir()) == ["datasets"]  # no run folder, nothing else written


def test_every_numeric_hyperparameter_of_every_algorithm_has_a_range_holding_its_default() -> None:
    import neuracore.ml.algorithms  # noqa: F401 - registers the built-in algorithms
    from neuracore.ml.core.hyperparameters import check_hyperparameters, is_numeric, ranges_for
    from neuracore.ml.core.registry import registered_algorithms

    missing = []
    for name, cls in registered_algorithms().items():
        hints = typing.get_type_hints(cls.__init__)
        ranges = ranges_for(cls)
        for key, default in cls.hyperparameter_defaults().items():
            annotation = str(hints.get(key, ""))
            numeric = is_numeric(default) or (default is None and ("int" in annotation or "float" in annotation))
            if numeric and key not in ranges:
                missing.append(f"{name}.{key}")
        check_hyperparameters(cls, cls.hyperparameter_defaults())  # the defaults are valid
    assert missing == []


def test_a_model_too_large_for_memory_fails_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from neuracore.ml.algorithms.cnnmlp import CNNMLP
    from neuracore.ml.trainers.model_size import check_model_fits, meta_model_bytes
    from tests.ml.export.test_model_folder import make_mid

    mid = make_mid()
    hyper = {"hidden_dim": 40000, "num_layers": 3}
    initialised = []
    real_init = torch.nn.init.kaiming_uniform_

    def watch(tensor, *args, **kwargs):  # every Linear weight passes here: record where it lives
        initialised.append(tensor.device.type)
        return real_init(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", watch)
    needed = meta_model_bytes(CNNMLP, mid, hyper)
    assert needed is not None and needed > 40000 * 40000 * 4  # at least two 40000x40000 fp32 layers
    with pytest.raises(ConfigError) as info:
        check_model_fits(CNNMLP, mid, hyper, available_bytes=2**30)
    message = str(info.value)
    assert message.startswith("algorithm=cnnmlp: its weights alone need ") and "\n" not in message
    assert "1.0 GiB of memory available" in message and "algorithm.hidden_dim=40000" in message
    assert initialised and set(initialised) == {"meta"}  # shapes only, no storage was allocated
    # A model that fits passes and reports its size.
    assert check_model_fits(CNNMLP, mid, {"hidden_dim": 32, "num_layers": 1}, available_bytes=2**30) > 0


def test_an_unwritable_run_folder_is_one_line_naming_the_key(home: Path) -> None:
    proc = run_cli(FAST + ["max_steps=1", "local_output_dir=/proc/neuracore-run"], home, timeout=300)
    message = error_line(proc, only_line=False)  # start-up log lines come first
    assert message.startswith("local_output_dir: cannot create the run folder /proc/neuracore-run"), message
    assert not Path("/proc/neuracore-run").exists()
