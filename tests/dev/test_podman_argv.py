"""The kubelet's podman runtime turns a pod spec into the `podman run` a real node's runtime would do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemodel_dev.containers import Engine
from edgemodel_dev.fileaccess import Identity
from edgemodel_dev.podman import PodmanRuntime

POD: dict[str, Any] = {
    "metadata": {"name": "digits-r1-convert-abcde", "namespace": "ml", "uid": "0123456789",
                 "ownerReferences": [{"kind": "Job", "name": "digits-r1-convert"}]},
    "spec": {
        "terminationGracePeriodSeconds": 5,
        "volumes": [{"name": "key", "secret": {"secretName": "s"}}, {"name": "scratch", "emptyDir": {}},
                    {"name": "data", "hostPath": {"path": "/data"}}],
        "containers": [{
            "name": "convert", "image": "localhost/edgemodel-converter:dev",
            "command": ["edgemodel"], "args": ["convert", "--job", "--revision", "$(REV)"],
            "workingDir": "/scratch",
            "resources": {"limits": {"cpu": "1500m", "memory": "2Gi"}},
            "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
            "volumeMounts": [{"name": "key", "mountPath": "/var/run/key"}, {"name": "scratch", "mountPath": "/scratch"},
                             {"name": "data", "mountPath": "/in", "readOnly": True, "subPath": "models"}],
        }],
    },
}


def test_run_argv_maps_the_pod_spec() -> None:
    runtime = PodmanRuntime(Engine("/usr/bin/podman"))
    volumes = {"key": Path("/s/key"), "scratch": Path("/s/scratch"), "data": Path("/h/data")}
    argv = runtime.run_argv(POD, POD["spec"]["containers"][0], Identity(10001, 10001, (10001, 4000)),
                            {"REV": "1"}, volumes, Path("/s/termination"))
    joined = " ".join(argv)
    assert argv[:5] == ["/usr/bin/podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    for expected in (
        "run --rm --name k8s_convert_digits-r1-convert-abcde_ml_01234567 --pull never --network host",
        "--stop-timeout 5", "--user 10001:10001 --group-add 10001 --group-add 4000", "--read-only",
        "--cap-drop ALL --cap-add NET_BIND_SERVICE", "--security-opt no-new-privileges",
        f"--memory {2 * 2**30} --cpus 1.5",
        "-v /s/key:/var/run/key:ro", "-v /s/scratch:/scratch:rw", "-v /h/data/models:/in:ro",
        "-v /s/termination:/dev/termination-log:rw", "--env REV=1", "--workdir /scratch",
        '--entrypoint ["edgemodel"] localhost/edgemodel-converter:dev convert --job --revision 1',
    ):
        assert expected in joined, (expected, joined)
    assert joined.endswith("--revision 1")


def test_only_job_pods_unless_every_pod_is_asked_for() -> None:
    engine = Engine("/usr/bin/podman")
    bare = {"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": {}}
    assert PodmanRuntime(engine).wants(POD)
    assert not PodmanRuntime(engine).wants(bare)
    assert PodmanRuntime(engine, scope="all").wants(bare)
