"""Make a join token for agents: ``manage.py create_join_token [--ttl 1h] [--uses N]``.

The token is the last line of the output, alone, so scripts can take it with ``tail -n 1``.
"""

from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from nodes.services import join_token_create, ttl_seconds_parse


class Command(BaseCommand):
    help = "Make a join token an agent exchanges once for a credential of its own node."

    def add_arguments(self, parser):
        parser.add_argument("--ttl", default="1h",
                            help="how long it can be used: 30s, 15m, 1h, 2d or never (default 1h)")
        parser.add_argument("--uses", type=int, default=1,
                            help="how many nodes may join with it (default 1; 0: unlimited)")

    def handle(self, *args, ttl: str, uses: int, **options):
        if uses < 0:
            raise CommandError("--uses must be 0 (unlimited) or more")
        try:
            ttl_seconds = ttl_seconds_parse(ttl)
            token = join_token_create(ttl_seconds=ttl_seconds, uses=uses or None)
        except DomainError as error:
            raise CommandError(f"--{error.field or 'ttl'}: {error}") from None
        expires = "never expires" if ttl_seconds is None else f"expires in {ttl}"
        joins = "any number of nodes" if not uses else f"{uses} node{'s' if uses != 1 else ''}"
        self.stdout.write(f"Join token for {joins}; it {expires}. It is shown only this once.")
        self.stdout.write("An agent exchanges it for a credential of its own node, kept in its data folder.")
        self.stdout.write(token)
