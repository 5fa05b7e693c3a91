"""How cachecast's Kafka clients connect: one place for security and credentials.

Every Kafka client the project makes (the application's event emitter, the
Faust worker, the topic admin, the snapshot reader, the replay's outcome
watcher) takes its connection options from :func:`kafka_options` (aiokafka) or
:func:`faust_credentials` (Faust), so ``KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT,
SSL, SASL_PLAINTEXT, SASL_SSL), the SASL mechanism (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512) and credentials, and the TLS files reach all of them. Passwords
are ``SecretStr`` in the settings and leave them only here, into the client.

>>> from pipeline.config import Settings
>>> kafka_options(Settings())
{'security_protocol': 'PLAINTEXT'}
>>> options = kafka_options(Settings(kafka_security_protocol="SASL_PLAINTEXT",
...     kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="app",
...     kafka_sasl_password="s3cret"))
>>> options["sasl_mechanism"], options["sasl_plain_username"]
('SCRAM-SHA-256', 'app')
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings

if TYPE_CHECKING:
    import faust

__all__ = ["faust_credentials", "kafka_options", "kafka_ssl_context"]


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL connections (None for plaintext ones)."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_ca_file)
    if settings.kafka_ssl_cert_file:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            settings.kafka_ssl_cert_file,
            settings.kafka_ssl_key_file,
            password.get_secret_value() if password else None,
        )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for an aiokafka producer, consumer or admin client."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The Faust app's ``broker_credentials`` (None: plaintext, no authentication)."""
    import faust

    protocol = settings.kafka_security_protocol
    context = kafka_ssl_context(settings)
    if protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
