from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header


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
