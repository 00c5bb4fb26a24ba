"""EmailNotification / SESSender against moto's SES server on loopback, and LogUpload into S3."""
import email
import os
import uuid

import pytest

from aitoolbox.cloud.AWS.s3 import get_s3_client
from aitoolbox.cloud.AWS.simple_email_service import SESSender
from aitoolbox.torchtrain.callbacks import basic
from aitoolbox.torchtrain.callbacks.abstract import AbstractCallback
from aitoolbox.torchtrain.callbacks.notification import EmailNotification, LogUpload
from tests.callbacks.cb_testkit import LogCapture, make_loop

REGION = "eu-west-1"


@pytest.fixture
def ses_identity(moto_server):
    """A verified sender address on the moto server and a fresh recipient address."""
    import boto3

    moto_server.start()
    sender = f"trainer-{uuid.uuid4().hex[:8]}@example.com"
    boto3.client("ses", region_name=REGION).verify_email_identity(EmailAddress=sender)
    return sender, f"me-{uuid.uuid4().hex[:8]}@example.com"


def sent_messages(moto_server, recipient):
    """The raw emails the SES server recorded for ``recipient``, parsed, in sending order.

    The server (moto's ThreadedMotoServer) runs in this process, so its SES backend - what the
    HTTP endpoint answered - can be read directly. (Its ``/moto-api/data.json`` dump also lists
    them, but fails with HTTP 500 once other services hold state it cannot serialise.)
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    raw = [m for m in ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages
           if recipient in m.destinations and hasattr(m, "raw_data")]
    return [(m.source, email.message_from_string(m.raw_data)) for m in raw]


def html_body(message) -> str:
    parts = [p for p in message.walk() if p.get_content_type() == "text/html"]
    assert len(parts) == 1
    return parts[0].get_payload(decode=True).decode("utf-8")


def test_the_basic_module_re_exports_the_notification_callbacks():
    assert basic.EmailNotification is EmailNotification and basic.LogUpload is LogUpload


def test_ses_sender_sends_html_and_attachments_to_the_server(moto_server, ses_identity, tmp_path):
    sender, recipient = ses_identity
    attachment = tmp_path / "loss.png"
    attachment.write_bytes(b"\x89PNG fake")
    message_id = SESSender("Trainer", sender, recipient, aws_region=REGION).send_email(
        "Subject line", "<p>hello</p>", [str(attachment)])
    assert message_id
    [(source, message)] = sent_messages(moto_server, recipient)
    assert source == f"Trainer <{sender}>"
    assert message["Subject"] == "Subject line" and message["To"] == recipient
    assert "<p>hello</p>" in html_body(message)
    [part] = [p for p in message.walk() if p.get_filename()]
    assert part.get_filename() == "loss.png" and part.get_payload(decode=True) == b"\x89PNG fake"


def test_email_notification_reports_every_epoch_and_the_end_of_training(moto_server, ses_identity):
    sender, recipient = ses_identity
    loop = make_loop()
    callback = EmailNotification("Trainer", sender, recipient, project_name="proj", experiment_name="exp",
                                 aws_region=REGION)
    loop.fit(num_epochs=2, callbacks=[callback])
    messages = [m for _, m in sent_messages(moto_server, recipient)]
    assert [m["Subject"] for m in messages] == ["End of epoch 0 report: proj: exp", "End of epoch 1 report: proj: exp",
                                                "End of training: proj: exp"]
    final = html_body(messages[-1])
    assert f"loss: {loop.train_history['loss'][-1]}" in final
    assert f"val_loss: {loop.train_history['val_loss'][-1]}" in final
    assert "Used hyper parameters" in final


class Explode(AbstractCallback):
    def __init__(self):
        super().__init__("Explode")

    def on_epoch_end(self):
        if self.train_loop_obj.epoch == 1:
            raise RuntimeError("disk on fire")


def test_email_notification_sends_a_crash_report(moto_server, ses_identity):
    sender, recipient = ses_identity
    callback = EmailNotification("Trainer", sender, recipient, "proj", "exp", aws_region=REGION)
    with pytest.raises(RuntimeError, match="disk on fire"):
        make_loop().fit(num_epochs=3, callbacks=[Explode(), callback])
    subjects = [m["Subject"] for _, m in sent_messages(moto_server, recipient)]
    assert subjects[-1] == "Training crashed: proj: exp"
    body = html_body(sent_messages(moto_server, recipient)[-1][1])
    assert "RuntimeError: disk on fire" in body and "Traceback" in body


def test_email_notification_attaches_the_files_other_callbacks_announce(moto_server, ses_identity, tmp_path):
    sender, recipient = ses_identity
    plot = tmp_path / "val_loss.png"
    plot.write_bytes(b"plot-bytes")

    class Announce(AbstractCallback):
        def __init__(self):
            super().__init__("Announce", execution_order=0)

        def on_epoch_end(self):
            self.message_service.write("ModelTrainHistoryPlot_results_file_local_paths", [str(plot)])

    make_loop().fit(num_epochs=1, callbacks=[Announce(), EmailNotification("T", sender, recipient, "p", "e",
                                                                           aws_region=REGION)])
    first = sent_messages(moto_server, recipient)[0][1]
    assert [p.get_payload(decode=True) for p in first.walk() if p.get_filename() == "val_loss.png"] == [b"plot-bytes"]


def test_a_rejected_email_is_logged_and_training_goes_on(moto_server):
    moto_server.start()
    callback = EmailNotification("T", f"unverified-{uuid.uuid4().hex[:6]}@example.com", "x@example.com", "p", "e",
                                 aws_region=REGION)
    loop = make_loop()
    with LogCapture() as logs:
        loop.fit(num_epochs=1, callbacks=[callback])
    assert loop.epoch == 1
    assert any("not sent" in m for m in logs.messages)


def test_email_notification_without_names_or_experiment_fails_at_fit():
    with pytest.raises(ValueError, match="pass project_name and experiment_name"):
        make_loop().fit(num_epochs=1, callbacks=[EmailNotification("T", "a@example.com", "b@example.com")])


def test_log_upload_mirrors_the_log_file_into_the_experiments_bucket_folder(s3_bucket, tmp_path):
    log_file = tmp_path / "training.log"
    log_file.write_text("epoch 1 done\n")

    class GrowLog(AbstractCallback):
        def __init__(self):
            super().__init__("GrowLog", execution_order=-10)

        def on_epoch_end(self):
            with open(log_file, "a") as f:
                f.write(f"epoch {self.train_loop_obj.epoch} end\n")

    callback = LogUpload(str(log_file), project_name="proj", experiment_name="exp",
                         local_model_result_folder_path=str(tmp_path / "results"), cloud_save_mode="s3",
                         bucket_name=s3_bucket, cloud_dir_prefix="runs")
    make_loop().fit(num_epochs=2, callbacks=[GrowLog(), callback])
    store = callback.store
    key = f"runs/proj/{store.folder.name}/training.log"
    body = get_s3_client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert body == log_file.read_bytes() and b"epoch 1 end" in body
    assert open(os.path.join(store.path, "training.log"), "rb").read() == body


def test_log_upload_requires_cloud_storage_unless_told_otherwise(tmp_path):
    names = dict(project_name="p", experiment_name="e", local_model_result_folder_path=str(tmp_path))
    with pytest.raises(ValueError, match="fail_if_cloud_missing=False"):
        make_loop().fit(num_epochs=1, callbacks=[LogUpload(str(tmp_path / "x.log"), **names)])
    log_file = tmp_path / "run.log"
    log_file.write_text("hello\n")
    callback = LogUpload(str(log_file), fail_if_cloud_missing=False, **names)
    make_loop().fit(num_epochs=1, callbacks=[callback])
    assert open(os.path.join(callback.store.path, "run.log")).read() == "hello\n"
