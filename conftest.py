import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("root", password="pw")


@pytest.fixture
def staff_client(client, admin_user):
    """Django's test client logged in to the console as staff."""
    client.force_login(admin_user)
    return client


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", password="pw")


def _client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(admin_user) -> APIClient:
    """An API client authenticated as staff, with a token as the seed's users would send."""
    return _client_for(admin_user)


@pytest.fixture
def user_api(user) -> APIClient:
    return _client_for(user)


@pytest.fixture
def client_for():
    return _client_for
