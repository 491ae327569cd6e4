"""Which credential an az:// tier uses (issue 21): keys, SAS tokens and connection
strings first, Entra ID (azure-identity's DefaultAzureCredential) when none is given.
Azurite takes no Entra ID tokens over http, so the choice is tested here, not a login."""

from __future__ import annotations

import sys

import pytest

from stormount.backends import open_backend
from stormount.backends.azure import AzureBackend, choose_auth
from stormount.config import parse_tier_url
from stormount.errors import ConfigError

SP = {"AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
      "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000002",
      "AZURE_CLIENT_SECRET": "secret"}
KEY = "a2V5"  # base64 of "key"
URL = "https://acct.blob.core.windows.net"


def tier(**options: object):
    return parse_tier_url("az://cont/pre", options)


def test_service_principal_in_the_environment_is_entra_id():
    auth = choose_auth(tier(), {**SP, "AZURE_STORAGE_ACCOUNT": "acct"})
    assert (auth.kind, auth.source, auth.account_url) == (
        "entra_id", "DefaultAzureCredential", URL)
    # with no secret at all (a managed identity, az login) the choice is the same
    assert choose_auth(tier(account_url=URL), {}).kind == "entra_id"


def test_an_explicit_key_wins_over_the_environment():
    env = {**SP, "AZURE_STORAGE_ACCOUNT": "other", "AZURE_STORAGE_KEY": "ZW52",
           "AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=env"}
    auth = choose_auth(tier(account_url=URL, account_key=KEY), env)
    assert (auth.kind, auth.source, auth.key, auth.account_name) == (
        "shared_key", "account_key", KEY, "acct")
    auth = choose_auth(tier(account_url=URL, sas_token="?sv=1&sig=tier"), env)
    assert (auth.kind, auth.source, auth.sas) == ("sas", "sas_token", "sv=1&sig=tier")


def test_a_storage_key_or_sas_in_the_environment_wins_over_entra_id():
    env = {**SP, "AZURE_STORAGE_ACCOUNT": "acct"}
    assert choose_auth(tier(), {**env, "AZURE_STORAGE_KEY": KEY}).source == \
        "AZURE_STORAGE_KEY"
    assert choose_auth(tier(), {**env, "AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=x"}).source == \
        "AZURE_STORAGE_SAS_TOKEN"
    assert choose_auth(tier(account_url=URL + "/?sv=1&sig=x"), env).kind == "url_sas"


def test_connection_strings_come_first():
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY}"
    env = {**SP, "AZURE_STORAGE_CONNECTION_STRING": conn, "AZURE_STORAGE_KEY": KEY}
    assert choose_auth(tier(connection_string=conn), env).source == "connection_string"
    assert choose_auth(tier(), env).source == "AZURE_STORAGE_CONNECTION_STRING"
    # a tier's own account_url sets the environment's connection string aside
    auth = choose_auth(tier(account_url=URL), env)
    assert (auth.kind, auth.source) == ("shared_key", "AZURE_STORAGE_KEY")


def test_no_account_or_no_https_is_one_line():
    with pytest.raises(ConfigError) as err:
        choose_auth(tier(), SP)
    assert "no Azure credentials" in str(err.value)
    assert "AZURE_STORAGE_ACCOUNT" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        choose_auth(tier(account_url="http://127.0.0.1:10000/devstoreaccount1"), SP)
    assert "not https" in str(err.value)


async def test_entra_id_backend_holds_and_closes_its_credential(monkeypatch):
    from azure.identity import DefaultAzureCredential
    for name, value in {**SP, "AZURE_STORAGE_ACCOUNT": "acct"}.items():
        monkeypatch.setenv(name, value)
    backend = open_backend(tier())
    assert isinstance(backend, AzureBackend)
    credential = backend._owned_credential
    assert isinstance(credential, DefaultAzureCredential)
    assert backend.account_url == URL
    closed = []
    monkeypatch.setattr(credential, "close", lambda: closed.append(True))
    await backend.aclose()
    assert closed == [True]


def test_entra_id_without_azure_identity_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # as if not installed
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "acct")
    with pytest.raises(ConfigError) as err:
        open_backend(tier())
    message = str(err.value)
    assert "pip install 'stormount[azure]'" in message and "\n" not in message
    assert "account_key" in message
