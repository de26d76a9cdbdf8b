"""CPU limits from fake cgroup files, capabilities, and the hand-encoded probe model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edge_agent.cgroup import available_cpus, cpu_limit, memory_limit, thread_count
from edge_agent.control.capabilities import cpu_flags, nvidia_gpus, probe
from edge_agent.probe import probe_model_bytes, working_providers
from edge_agent.providers import CPU, CUDA


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "cpu memory")
    write(tmp_path / "cpu.max", "150000 100000\n")
    assert cpu_limit(tmp_path, "0::/\n") == 1.5
    write(tmp_path / "cpu.max", "max 100000\n")
    assert cpu_limit(tmp_path, "0::/\n") is None


def test_cgroup_v2_the_smallest_limit_on_the_path_wins(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "cpu")
    write(tmp_path / "kubepods" / "cpu.max", "400000 100000")
    write(tmp_path / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000")
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "50000 100000")
    assert cpu_limit(tmp_path, "0::/kubepods/pod1/ctr\n") == 0.5


def test_cgroup_v1_quota_and_period(tmp_path: Path) -> None:
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "250000")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cpu_limit(tmp_path, "4:cpu,cpuacct:/\n3:memory:/\n") == 2.5
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    assert cpu_limit(tmp_path, "4:cpu,cpuacct:/\n") is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cpu_limit(tmp_path, "") is None
    assert available_cpus(tmp_path, "") >= 1


def test_threads_round_the_quota_up() -> None:
    assert [thread_count(c) for c in (0.25, 1.0, 1.5, 2.0, 3.01)] == [1, 1, 2, 2, 4]


def test_memory_limit_v2_and_v1(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", "536870912")
    assert memory_limit(tmp_path) == 512 * 1024 * 1024
    write(tmp_path / "memory.max", "max")
    assert memory_limit(tmp_path) is None
    write(tmp_path / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    assert memory_limit(tmp_path) is None


def test_probe_model_is_valid_onnx_and_runs() -> None:
    model = onnx.load_from_string(probe_model_bytes())
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(probe_model_bytes(), providers=[CPU])
    np.testing.assert_array_equal(session.run(None, {"x": np.array([2.0], dtype=np.float32)})[0], [4.0])


def test_working_providers_drop_the_ones_that_do_not_load() -> None:
    class Fake:
        def __init__(self, providers: list[str]) -> None:
            self.providers = providers

        def get_providers(self) -> list[str]:
            return self.providers

    def factory(model: bytes, providers: list[str]) -> Fake:
        if providers[0] == "OpenVINOExecutionProvider":
            raise RuntimeError("libopenvino.so missing")
        return Fake([CPU] if providers[0] == CUDA else providers)  # CUDA silently falls back

    found = working_providers([CUDA, "OpenVINOExecutionProvider", "AzureExecutionProvider", CPU], factory)
    assert found == [CPU]


def test_capabilities_of_this_machine() -> None:
    caps = probe()
    assert caps.providers == [CPU]
    assert caps.hardware_class.value == "cpu"
    assert caps.cpu_count >= 1
    assert caps.memory_bytes > 0
    assert caps.arch in ("amd64", "arm64", "arm")
    assert caps.onnxruntime_version == ort.__version__


def test_cpu_flags_and_gpus_from_files(tmp_path: Path) -> None:
    assert cpu_flags("flags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 sse\n") == ["amx_int8", "avx2", "avx512_vnni", "avx512f"]
    assert cpu_flags("Features\t: fp asimd asimddp\n") == ["asimd", "asimddp"]
    write(tmp_path / "0000:01:00.0" / "information", "Model: \t\t NVIDIA Jetson Orin\nIRQ: 5\n")
    assert [g.name for g in nvidia_gpus(tmp_path)] == ["NVIDIA Jetson Orin"]
