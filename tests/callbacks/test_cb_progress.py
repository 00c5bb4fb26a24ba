"""PrintProgress and LogMetrics."""
from aitoolbox.torchtrain.callbacks.progress import LogMetrics, PrintProgress
from tests.callbacks.cb_testkit import HistoryFeeder, LogCapture, make_loop


def test_print_progress_logs_the_run_and_each_epoch():
    with LogCapture() as logs:
        make_loop().fit(num_epochs=2, callbacks=[PrintProgress()])
    lines = [m for m in logs.messages if m.startswith(("Starting", "Finishing"))]
    assert lines == ["Starting training run: 2 epochs, 12 optimizer steps.", "Starting epoch 1/2",
                     "Starting epoch 2/2", "Finishing training run after 12 optimizer steps."]


class CollectMetrics(LogMetrics):
    def __init__(self):
        super().__init__()
        self.logged = []

    def log_metrics(self, metrics):
        self.logged.append(metrics)


def test_log_metrics_reports_the_metrics_updated_in_each_epoch():
    loop = make_loop(end_auto_eval=2)  # losses only every 2nd epoch
    collector = CollectMetrics()
    loop.fit(num_epochs=2, callbacks=[HistoryFeeder("val_acc", [0.5, 0.75]), collector])
    history = loop.train_history
    assert collector.logged[0] == {"accumulated_loss": history["accumulated_loss"][0], "val_acc": 0.5}
    assert collector.logged[1] == {"loss": history["loss"][0], "accumulated_loss": history["accumulated_loss"][1],
                                   "val_loss": history["val_loss"][0], "val_acc": 0.75}


def test_log_metrics_default_output():
    with LogCapture() as logs:
        make_loop().fit(num_epochs=1, callbacks=[LogMetrics()])
    line = next(m for m in logs.messages if m.startswith("Epoch 1 - "))
    assert "loss: " in line and "val_loss: " in line and "accumulated_loss: " in line
