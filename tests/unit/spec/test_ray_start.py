"""RayResources.start_flags: the one split of a node's resources into `ray start` flags, which the Helm values,
the KubeRay objects and `moxin node-resources` format."""

from __future__ import annotations

from orchestrator.render.helm import ray_start_args
from orchestrator.render.kuberay import ray_start_params


def test_start_flags_keep_cpu_and_gpu_out_of_resources(catalog) -> None:
    flags, custom = catalog.profile("nvidia-h100-sxm").spec.ray.start_flags(8, "n1")
    assert flags == {"num-gpus": 8.0}
    assert custom == {"accelerator_type:H100": 1.0, "moxin-node-n1": 1.0}
    flags, custom = catalog.profile("apple-m3-ultra-512g").spec.ray.start_flags(1)
    assert flags == {} and custom == {"mlx": 1.0, "accelerator_type:M3-Ultra-512G": 1.0}


def test_helm_and_kuberay_format_the_same_flags(catalog) -> None:
    for name in ("nvidia-h100-sxm", "cpu-x86", "cambricon-mlu590"):
        profile = catalog.profile(name)
        args = ray_start_args(profile, 4)
        params = ray_start_params(profile, 4)
        flags, custom = profile.spec.ray.start_flags(4)
        assert [a for a in args if not a.startswith("--resources=")] == [f"--{k}={v:g}" for k, v in flags.items()]
        assert {k: v for k, v in params.items() if k != "resources"} == {k: f"{v:g}" for k, v in flags.items()}
        assert bool(custom) == any(a.startswith("--resources=") for a in args) == ("resources" in params)
