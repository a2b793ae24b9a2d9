from functools import lru_cache

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.authtoken.models import Token

from .db import sql_column, sql_table


class BearerOrTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>`` as DRF spells it, or ``Bearer <key>`` as most clients do.

    The header is parsed here rather than rewritten in ``request.META``: Django caches
    ``request.headers`` on first use, so a rewrite would not be seen by DRF.
    """

    keywords = (b"token", b"bearer")

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in self.keywords:
            return None
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed(_("Invalid token header. Token string should not contain spaces."))
        try:
            key = auth[1].decode()
        except UnicodeError:
            message = _("Invalid token header. Token contains invalid characters.")
            raise exceptions.AuthenticationFailed(message) from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key):
        """DRF's lookup, as one statement written out once: every API call makes it, and building
        the ORM query cost twice what running it does."""
        user = next(iter(get_user_model().objects.raw(_token_user_sql(), [key])), None)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user_id=user.pk)
        token.user = user
        return user, token


@lru_cache(maxsize=1)
def _token_user_sql() -> str:
    user = get_user_model()
    return (f"SELECT u.* FROM {sql_table(Token)} t JOIN {sql_table(user)} u "
            f"ON u.{sql_column(user, 'id')} = t.{sql_column(Token, 'user')} WHERE t.{sql_column(Token, 'key')} = %s")
