"""`maskdex remove`: take images out of an index (storage/removal.py)."""

from __future__ import annotations

import json
import os

from maskdex.jobs.arguments import add_db


def add_parser(commands) -> None:
    remove = commands.add_parser(
        "remove", help="remove images (their images rows, regions and stored segmentations) from an index")
    add_db(remove)
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("--image-id", nargs="+", metavar="ID", help="the ids of the images to remove")
    which.add_argument("--uri-prefix", metavar="PREFIX",
                       help="remove every image whose uri starts with PREFIX (a local path is made absolute, "
                            "as the index records it)")
    which.add_argument("--ids-file", metavar="FILE", help="a file of image ids, one per line (# comments)")
    remove.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    remove.add_argument("--json", action="store_true", help="print the report as JSON")
    remove.set_defaults(run=run_remove)


def run_remove(args) -> int:
    from maskdex.storage import removal
    from maskdex.storage.index_store import IndexStore

    if args.ids_file is not None:
        image_ids = removal.read_ids_file(args.ids_file)
    elif args.image_id is not None:
        image_ids = removal.check_image_ids(args.image_id)
    else:
        image_ids = None
    # A dry run reads only: a writable open would already delete what a killed removal left.
    store = IndexStore.open(args.db, fingerprint=None, embed_dim=None, create=False, read_only=args.dry_run)
    if image_ids is None:
        image_ids = sorted(removal.images_under(store, local_prefix(args.uri_prefix)))
    report = removal.remove_images(store, image_ids, dry_run=args.dry_run)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0


def local_prefix(prefix: str) -> str:
    """A uri prefix as the index records uris: object-store URIs as given, local paths absolute (a
    trailing separator kept, so that `photos/` does not also name `photos2/`)."""
    if not prefix:
        raise ValueError("--uri-prefix is empty: it would name every image")
    if "://" in prefix:
        return prefix
    absolute = os.path.abspath(prefix)
    return absolute + os.sep if prefix.endswith(("/", os.sep)) and not absolute.endswith(os.sep) else absolute
