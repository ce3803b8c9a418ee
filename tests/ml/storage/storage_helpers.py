"""Helpers shared by the storage tests and the hub CLI tests: loopback S3 server, tiny exports."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuracore.ml.algorithms.cnnmlp import CNNMLP
from neuracore.ml.core import DataType, FeatureSpec, ModelInitDescription, build_model
from neuracore.ml.export import export_model

BUCKET = "neuracore-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-printed",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[Any, str]:
    """Start moto's S3 server on 127.0.0.1 with bucket BUCKET; returns (server, endpoint URL)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)
    return server, endpoint


JOINTS = ["shoulder", "elbow", "gripper"]
HORIZON = 4


def make_mid(camera: bool = False) -> ModelInitDescription:
    """3 joints in and out (plus one 64x64 camera when asked), non-trivial statistics."""
    inputs = {
        DataType.JOINT_POSITIONS: FeatureSpec(
            DataType.JOINT_POSITIONS, list(JOINTS), [1], {"mean": [0.1, -0.4, 0.02], "std": [0.7, 1.3, 0.05]}
        )
    }
    if camera:
        inputs[DataType.RGB_IMAGES] = FeatureSpec(DataType.RGB_IMAGES, ["top"], [3, 64, 64])
    return ModelInitDescription(
        inputs=inputs,
        outputs={
            DataType.JOINT_TARGET_POSITIONS: FeatureSpec(
                DataType.JOINT_TARGET_POSITIONS, list(JOINTS), [1], {"mean": [1.0, -2.0, 0.5], "std": [0.5, 0.25, 2.0]}
            )
        },
        output_prediction_horizon=HORIZON,
        frequency=10.0,
    )


def make_model(seed: int = 0, camera: bool = False) -> CNNMLP:
    """A small CNNMLP with seeded random weights."""
    torch.manual_seed(seed)
    return build_model(CNNMLP, make_mid(camera), {"hidden_dim": 16, "cnn_output_dim": 16, "num_layers": 1}).eval()


def export_tiny(folder: Path, seed: int = 0, camera: bool = False, steps: int = 7) -> Path:
    """Export a small CNNMLP to `folder` with a dataset/training summary."""
    return export_model(
        make_model(seed, camera), folder,
        training={"steps": steps, "best_validation_loss": 0.25, "command": "python -m neuracore.ml.train ..."},
        dataset={"name": "tinyset", "fingerprint": "f" * 64, "episodes": 3, "frames": 42},
    )


def observation(seed: int = 1, camera: bool = False) -> dict[str, np.ndarray]:
    """One observation for the tiny models."""
    rng = np.random.default_rng(seed)
    obs = {DataType.JOINT_POSITIONS.value: rng.normal(size=3).astype(np.float32)}
    if camera:
        obs[DataType.RGB_IMAGES.value] = rng.integers(0, 256, size=(1, 64, 64, 3), dtype=np.uint8)
    return obs


