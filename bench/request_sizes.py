"""Longest request line the importer's Supabase calls send, per call shape: prints a table.

The edge in front of Supabase refuses long request lines (414): Kong's nginx above 8 KB, hosted
Supabase's Cloudflare around 16 KB. Id lists travel in query strings, so this measures the calls that
carry them, with the client's HTTP transport replaced by a recorder (no server needed):

    PYTHONPATH=$PWD .venv/bin/python bench/request_sizes.py              # this checkout
    PYTHONPATH=/work/main .venv/bin/python bench/request_sizes.py        # another checkout, for "before"

Each row: requests sent and the longest request line (method, target, " HTTP/1.1") in bytes.
"""

from __future__ import annotations

import uuid

import httpx

from pipeline.testing.supabase_stack.keys import mint_key
from transforms.clients.supabase import SupabaseClient
from transforms.core.convert import source_ref

DATASET = "6f1c0000-0000-4000-8000-000000000001"


def recorder(lines: list[int]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        lines.append(len(request.method) + 1 + len(request.url.raw_path) + len(" HTTP/1.1"))
        if request.method == "GET":
            return httpx.Response(200, json=[])
        return httpx.Response(204)

    return httpx.MockTransport(handle)


def measure(client: SupabaseClient, lines: list[int], call) -> tuple[int, int]:
    lines.clear()
    call()
    return len(lines), max(lines)


def main() -> None:
    client = SupabaseClient("https://xyz.supabase.co", mint_key("x" * 40, "service_role"))
    lines: list[int] = []
    client._http._transport = recorder(lines)
    ids = [str(uuid.uuid4()) for _ in range(500)]
    cases = {
        "existing_images lookup, --batch_size 50": lambda: client.existing_images(
            DATASET, [source_ref(DATASET, f"{i:020d}") for i in range(50)]),
        "existing_images lookup, --batch_size 500": lambda: client.existing_images(
            DATASET, [source_ref(DATASET, f"{i:020d}") for i in range(500)]),
        "prune delete od_annotations, 200 ids": lambda: client.delete_rows(
            "od_annotations", dataset_id=DATASET, image_id=ids[:200]),
        "prune mark (update), 200 ids": lambda: client.update_rows(
            "od_dataset_images", {"source_missing_at": None}, dataset_id=DATASET, image_id=ids[:200]),
        "stale annotations of a 400-box image": lambda: client.delete_stale_annotations(
            DATASET, ids[0], [f"{i:020x}#0" for i in range(400)]),
    }
    print(f"{'call':<44}{'requests':>10}{'longest line (B)':>18}")
    for name, call in cases.items():
        requests, longest = measure(client, lines, call)
        print(f"{name:<44}{requests:>10}{longest:>18,}")
    client.close()


if __name__ == "__main__":
    main()
