"""k8s_validate.py VERSION FILE...: validates every object of each YAML file (and each item of a
List) against the JSON schemas of Kubernetes VERSION that PyPI kubernetes-validate bundles, in
strict mode (a field the schema does not name is an error). Unlike the kubernetes-validate
command, a kind without a schema is an error too, so a typo in a kind cannot pass.

Prints one line per object, `ok FILE KIND/NAME` or `error FILE KIND/NAME: PATH: MESSAGE`, and
exits 1 if any object failed (2 on bad usage or unreadable YAML). Used by tests/it/k8s.rs.
"""
import sys

import yaml
import kubernetes_validate
from kubernetes_validate import SchemaNotFoundError, ValidationError


def objects(path):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                yield from doc.get("items") or []
            else:
                yield doc


def name_of(obj):
    if not isinstance(obj, dict):
        return "(not an object)"
    meta = obj.get("metadata") or {}
    return "%s/%s" % (obj.get("kind", "?"), meta.get("name", "?"))


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    version, files = argv[1], argv[2:]
    failed = False
    for path in files:
        try:
            objs = list(objects(path))
        except (OSError, yaml.YAMLError) as e:
            print("error %s: cannot read: %s" % (path, e))
            return 2
        if not objs:
            print("error %s: no objects" % path)
            failed = True
        for obj in objs:
            what = "%s %s" % (path, name_of(obj))
            try:
                if not isinstance(obj, dict):
                    raise TypeError("not a mapping")
                kubernetes_validate.validate(obj, version, strict=True)
                print("ok %s" % what)
            except ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                print("error %s: %s: %s" % (what, where, e.message))
                failed = True
            except SchemaNotFoundError as e:
                print("error %s: %s" % (what, e.message))
                failed = True
            except (TypeError, KeyError) as e:
                print("error %s: %s" % (what, e))
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
