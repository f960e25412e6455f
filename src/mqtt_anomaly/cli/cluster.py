"""``mqtt-anomaly cluster``: the NATS JetStream cluster of detector workers."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..console import out, run
from .options import ConfigOpt
from .settings import settings_from_cli

app = typer.Typer(no_args_is_help=True, help="Scale-out on NATS JetStream: status, mapping.")

ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster", help="NATS servers: nats://HOST:PORT[,HOST:PORT...].", show_default=False
    ),
]


@app.command("status")
def status(
    config: ConfigOpt = None,
    cluster: ClusterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Workers, partitions and their owners, position, lag and hand-offs."""
    from ..cluster.status import read_status

    settings = settings_from_cli(config, {"cluster": {"urls": cluster}})
    if not settings.cluster.enabled:
        from ..console import fail

        fail("cluster status needs --cluster nats://HOST:PORT[,...] or cluster.urls")
    st = run(lambda: read_status(settings.cluster))
    if as_json:
        out.print_json(json.dumps(st.as_dict()))
        return
    from rich.table import Table

    out.print(
        f"{len(st.workers)} workers, {len(st.partitions)} partitions, "
        f"{st.readings} readings in the stream (last seq {st.last_seq}), {st.alerts} alerts"
    )
    table = Table("partition", "owner", "epoch", "seq", "checkpoint", "lag", "scored", "hand-offs")
    for p in st.partitions:
        table.add_row(
            str(p.partition),
            p.owner or "-",
            str(p.epoch or "-"),
            str(p.seq),
            str(p.checkpoint_seq),
            "-" if p.lag is None else str(p.lag),
            str(p.scored),
            str(p.handoffs),
        )
    out.print(table)


@app.command("mapping")
def mapping(config: ConfigOpt = None) -> None:
    """The servers' subject mapping for these settings (the `mappings` block of nats.conf)."""
    from ..clusterconf import server_mappings

    settings = settings_from_cli(config, {})
    try:
        pairs = server_mappings(
            settings.topics.readings,
            settings.topics.status,
            settings.cluster.partitions,
            settings.cluster.subject,
        )
    except ValueError as exc:
        from ..console import fail

        fail(f"topics: {exc}")
    print("mappings {")
    for src, dest in pairs.items():
        print(f'  "{src}": "{dest}"')
    print("}")
