"""Email notifications through AWS Simple Email Service (SES).

boto3 is imported when a sender is created, not when this module is imported. The client
honours the standard AWS configuration, including ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SES``
(read natively by boto3 >= 1.28.57), so the same code talks to a local SES-compatible server.
"""
from __future__ import annotations

import logging
import os
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, Optional, Sequence

logger = logging.getLogger("aitoolbox")


def get_ses_client(aws_region: str, max_attempts: Optional[int] = 3) -> Any:
    """A boto3 SES client for ``aws_region`` (standard retries, at most ``max_attempts`` tries)."""
    import boto3
    from botocore.config import Config

    retries = {"mode": "standard"}
    if max_attempts is not None:
        retries["total_max_attempts"] = max_attempts
    return boto3.session.Session().client("ses", region_name=aws_region, config=Config(retries=retries))


class SESSender:
    """Send HTML emails (with optional attachments) through AWS SES.

    Args:
        sender_name: display name of the sender.
        sender_email: the sender's address; SES must have it verified.
        recipient_email: where the emails go.
        aws_region: the SES region.

    Attributes:
        sender: ``'<sender_name> <<sender_email>>'``, the SES ``Source``.
        client: the boto3 SES client.
    """

    CHARSET = "UTF-8"

    def __init__(self, sender_name: str, sender_email: str, recipient_email: str, aws_region: str = "eu-west-1"):
        for name, value in (("sender_email", sender_email), ("recipient_email", recipient_email)):
            if not isinstance(value, str) or "@" not in value:
                raise ValueError(f"{name} must be an email address (str with '@'), got {value!r}.")
        self.sender_name = sender_name
        self.sender_email = sender_email
        self.sender = f"{sender_name} <{sender_email}>"
        self.recipient_email = recipient_email
        self.aws_region = aws_region
        self.client = get_ses_client(aws_region)

    def build_message(self, subject: str, body: str,
                      attachment_file_paths: Optional[Sequence[str]] = None) -> MIMEMultipart:
        """The MIME message: the HTML ``body`` and one attachment per file that exists."""
        message = MIMEMultipart("mixed")
        message["Subject"] = subject
        message["From"] = self.sender
        message["To"] = self.recipient_email
        alternative = MIMEMultipart("alternative")
        html = f"<html>\n<head></head>\n<body>\n{body}\n</body>\n</html>\n"
        alternative.attach(MIMEText(html.encode(self.CHARSET), "html", self.CHARSET))
        message.attach(alternative)
        for path in attachment_file_paths or ():
            try:
                with open(path, "rb") as file:
                    part = MIMEApplication(file.read())
            except OSError as error:
                logger.warning("Email attachment %s skipped: %s", path, error)
                continue
            part.add_header("Content-Disposition", "attachment", filename=os.path.basename(path))
            message.attach(part)
        return message

    def send_email(self, subject: str, body: str,
                   attachment_file_paths: Optional[Sequence[str]] = None) -> Optional[str]:
        """Send an email; a failure is logged, never raised (notifications must not stop training).

        Args:
            subject: the subject line.
            body: the HTML body (inside ``<body>``).
            attachment_file_paths: local files to attach (missing ones are skipped with a warning).

        Returns:
            The SES message id, or None when sending failed.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        message = self.build_message(subject, body, attachment_file_paths)
        try:
            response = self.client.send_raw_email(Source=self.sender, Destinations=[self.recipient_email],
                                                  RawMessage={"Data": message.as_string()})
        except ClientError as error:
            logger.warning("Email '%s' to %s not sent: SES answered %s", subject, self.recipient_email,
                           error.response.get("Error", {}).get("Message", error))
            return None
        except BotoCoreError as error:
            logger.warning("Email '%s' to %s not sent: %s", subject, self.recipient_email, error)
            return None
        logger.info("Email '%s' sent to %s", subject, self.recipient_email)
        return response.get("MessageId")
