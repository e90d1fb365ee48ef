"""Drives google-auth (PyPI), unmodified, against the metadata server that GCE_METADATA_HOST and
GCE_METADATA_IP name, the way Google's Python libraries use it, and prints what the library got
as one JSON object. crates/emulator/tests/e2e_real_clients.rs compares it with the emulator's
document; this file only calls the library's public and documented entry points."""

import datetime
import json

import google.auth
from google.auth import compute_engine
from google.auth.compute_engine import _metadata
from google.auth.transport.requests import Request

request = Request()
out = {"version": google.auth.__version__}
# "Am I on GCE?": a GET of the server root, 200 with Metadata-Flavor: Google.
out["ping"] = _metadata.ping(request)
# A leaf and a recursive read.
out["hostname"] = _metadata.get(request, "instance/hostname")
out["project_id"] = _metadata.get_project_id(request)
out["instance"] = _metadata.get(request, "instance/", recursive=True)
out["service_account"] = _metadata.get_service_account_info(request)
# A service-account access token, as every Google client library on GCE gets one.
credentials = compute_engine.Credentials()
credentials.refresh(request)
out["token"] = credentials.token
out["token_valid"] = credentials.valid
out["token_seconds_left"] = (
    credentials.expiry - datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
).total_seconds()
out["email"] = credentials.service_account_email
out["scopes"] = list(credentials.scopes or [])
out["universe_domain"] = credentials.universe_domain
# Application Default Credentials with nothing configured: the metadata server is found.
default_credentials, default_project = google.auth.default()
out["default_type"] = type(default_credentials).__module__ + "." + type(default_credentials).__name__
out["default_project"] = default_project
print(json.dumps(out))
