"""Per-study work on a Dask cluster (features/parallel.py) gives the serial run's outputs, byte for byte.

A real `distributed.LocalCluster(n_workers=2, processes=True)`: the tasks are pickled to two worker
processes, as on a remote cluster that shares the data folder.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import pytest

from features.ingest import run_ingest
from features.parallel import DaskUnreachableError, ItemExecutor, map_items, open_executor
from features.texture import GLCMSettings
from features.texture_stage import TextureConfig, run_texture
from osteo_config.compute import ComputeConfig, ComputeConfigError
from osteo_testing.orthanc import free_port
from osteo_testing.texture_reference import synthetic_vertebra

distributed = pytest.importorskip("distributed", reason="distributed (prefect-dask's dependency) not installed")


def _pid_square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _touch(path: str) -> str:
    open(path, "w").close()
    return path


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("item 3 is bad")
    return x


@pytest.fixture(scope="module")
def dask_cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        yield ComputeConfig(dask_address=cluster.scheduler_address, connect_timeout_s=60)


def test_results_keep_input_order_and_run_in_the_workers(dask_cluster):
    items = list(range(12))
    serial = map_items(_pid_square, items)
    dask = map_items(_pid_square, items, compute=dask_cluster)
    assert [r for r, _ in dask] == [r for r, _ in serial] == [x * x for x in items]
    assert {p for _, p in dask}.isdisjoint({os.getpid()})          # ran in the worker processes, not here
    assert len({p for _, p in dask}) == 2                          # ... and on both of them
    done = []
    assert map_items(_pid_square, items, workers=2, on_done=lambda: done.append(1))[5][0] == 25
    assert len(done) == len(items)


def test_an_item_error_comes_back_with_its_type(dask_cluster):
    with pytest.raises(ValueError, match="item 3 is bad"):
        map_items(_fail_on_three, range(6), compute=dask_cluster)


def test_unreachable_scheduler_is_a_typed_error_naming_the_address():
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(DaskUnreachableError, match=address) as e:
        with open_executor(1, ComputeConfig(dask_address=address, connect_timeout_s=2)):
            pass
    assert "compute.dask_address" in str(e.value)


def test_compute_section_is_checked():
    assert ComputeConfig.from_params({}) == ComputeConfig()
    assert ComputeConfig.from_params({"compute": {"dask_address": "tcp://h:8786"}}).dask_address == "tcp://h:8786"
    with pytest.raises(ComputeConfigError, match="scheme"):
        ComputeConfig.from_params({"compute": {"dask_address": "h:8786"}})
    with pytest.raises(ComputeConfigError, match="unknown keys"):
        ComputeConfig.from_params({"compute": {"dask_adress": None}})
    with open_executor(1) as ex:
        assert isinstance(ex, ItemExecutor) and ex.kind == "serial"


def _tables(folder) -> dict[str, pd.DataFrame]:
    return {f.name: pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))}


def _files(folder, pattern) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern))}


def test_ingest_on_dask_matches_the_serial_run(dask_cluster, tmp_path, synth):
    hu, lab, aff, _ = synth.make_phantom()
    seg = synth.to_totalseg(lab)
    raw = tmp_path / "raw"
    patients, studies = [], []
    for i in range(3):
        acc, mrn = f"ACC20{i}", f"MRN20{i}"
        d = raw / "ct" / acc
        synth.save_nifti(hu + i, aff, d / "ct.nii.gz")              # three distinct studies
        synth.save_nifti(seg, aff, d / "seg.nii.gz")
        patients.append(dict(mrn=mrn, patient_name=f"P^{i}", birth_date="1950-01-0%d" % (i + 1), sex="F",
                             site="siteA"))
        studies.append(dict(mrn=mrn, site="siteA", scanner="scanner1", accession_number=acc,
                            study_instance_uid=f"1.2.826.0.1.3680043.8.498.20{i}", study_date="2024-03-0%d" % (i + 1),
                            contrast="0", ct_path=f"ct/{acc}/ct.nii.gz", ct_format="nifti",
                            mask_path=f"ct/{acc}/seg.nii.gz", mask_format="totalseg"))
    synth.write_tables(raw, patients, studies, [])
    serial = run_ingest(synth.config(), raw, tmp_path / "serial" / "ingest", profile="tiny", progress=False)
    dask = run_ingest(synth.config(), raw, tmp_path / "dask" / "ingest", profile="tiny", progress=False,
                      compute=dask_cluster)
    assert serial.studies.ingested == 3 and dask.studies == serial.studies and dask.vertebrae == serial.vertebrae
    a, b = _tables(tmp_path / "serial" / "ingest"), _tables(tmp_path / "dask" / "ingest")
    assert a.keys() == b.keys() and len(a["vertebrae.parquet"]) > 0
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert _files(tmp_path / "serial" / "ingest", "*.npz") == _files(tmp_path / "dask" / "ingest", "*.npz")


@pytest.mark.slow    # > 20 s: `make test-slow` (the PACS client's retries / Dask start-up / long loops)
def test_texture_on_dask_matches_the_serial_run(dask_cluster, tmp_path):
    rows = []
    for i in range(4):
        h, body = synthetic_vertebra((16, 16, 10), seed=i)
        sha = hashlib.sha256(h.tobytes() + body.tobytes()).hexdigest()
        rel = f"rois/{sha[:2]}/{sha}.npz"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp_path / rel, hu=h, body=body)
        rows.append({"patient_id": f"p{i}", "study_id": f"s{i}", "level": 13, "level_name": "L1", "roi_path": rel,
                     "roi_sha256": sha, "roi_shape": [16, 16, 10], "spacing_mm": [1.0, 1.0, 1.0]})
    pd.DataFrame(rows).to_parquet(tmp_path / "vertebrae.parquet", index=False)
    cfg = TextureConfig(glcm=GLCMSettings(kernel_radius=1), device="cpu", batch_size=2, workers=1,
                        scalar_features={"firstorder": ("Mean", "Maximum"), "glcm": ("Contrast",)})
    s1 = run_texture(cfg, tmp_path, tmp_path / "serial", progress=False)
    s2 = run_texture(cfg, tmp_path, tmp_path / "dask", progress=False, compute=dask_cluster)
    assert (s1.computed, s2.computed, s2.quarantined) == (4, 4, 0)
    for name in ("texture.parquet", "radiomics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "serial" / name),
                                      pd.read_parquet(tmp_path / "dask" / name))
    assert _files(tmp_path / "serial", "*.npy") == _files(tmp_path / "dask", "*.npy")


def test_submit_starts_the_items_in_the_workers_before_results_is_called(tmp_path):
    """What lets the texture stage run pyradiomics while its engine computes maps in the parent."""
    import time

    paths = [str(tmp_path / f"item{i}") for i in range(4)]
    with open_executor(2) as ex:
        pending = ex.submit(_touch, paths)
        t_end = time.monotonic() + 120
        while not all(os.path.exists(p) for p in paths) and time.monotonic() < t_end:
            time.sleep(0.01)
        assert all(os.path.exists(p) for p in paths), "the processes did not run the items before collection"
        ticks = []
        assert pending.results(lambda: ticks.append(1)) == paths and len(ticks) == 4
    serial = [str(tmp_path / f"serial{i}") for i in range(3)]
    pending = ItemExecutor().submit(_touch, serial)
    assert not any(os.path.exists(p) for p in serial), "in-process items run at collection, not at submit"
    assert pending.results() == serial and all(os.path.exists(p) for p in serial)
    with open_executor(2) as ex, pytest.raises(ValueError, match="item 3"):
        ex.submit(_fail_on_three, [1, 2, 3, 4]).results()
