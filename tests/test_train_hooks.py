

def test_resume_continues_after_the_checkpoint_and_marks_the_epoch(tmp_path):
    class _Checkpoint:
        def __init__(self, d):
            self.d = d

        def as_directory(self):
            import contextlib

            return contextlib.nullcontext(str(self.d))

    from vreid.train.loop import HISTORY_FILE, resume

    torch.save({"epoch": 2, "stage": 0, "model": {}}, tmp_path / STATE_FILE)
    (tmp_path / HISTORY_FILE).write_text(json.dumps([{"epoch": e} for e in (-1, 0, 1, 2)]))
    s = _state(tmp_path, [])
    resume(s, _Checkpoint(tmp_path))
    assert (s.epoch, s.start_epoch, s.resumed_from, s.stop) == (3, 3, 2, None)
    assert [h["epoch"] for h in s.history] == [-1, 0, 1, 2] and s.resumed["epoch"] == 2
    model, loss = _Model(), ReIDLoss(2, 2)
    s.optim = build_optimizers(model, loss, _stage())
    meter = EpochMeter()
    meter.before_epoch(s)
    meter.after_epoch(s)
    assert s.metrics["resumed_from_epoch"] == 2
    (tmp_path / STATUS_FILE).write_text("{}")  # a run that stopped on a NaN loss stays stopped
    stopped = _state(tmp_path, [])
    resume(stopped, _Checkpoint(tmp_path))
    assert stopped.stop == "nan_loss"
