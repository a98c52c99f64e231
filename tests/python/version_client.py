#!/usr/bin/env python3
"""A foreign gRPC client for basalt: calls machine.MachineService/Version through apid with
Python grpcio, using stubs generated from basalt's proto/ and a client config written by
`basaltctl gen client-config` (Talos's talosconfig layout, base64 PEM values).

Usage: version_client.py --stubs DIR --config FILE --endpoint HOST:PORT [--nodes A,B,...]

Prints `tag=<Version.tag>` on success; exits non-zero with the gRPC error otherwise. With
`--nodes` the call carries Talos's one-to-many `nodes` metadata (one value per node, as
talosctl <= 1.13 sends it) and one line per reply element is printed:
`node=<metadata.hostname> tag=<Version.tag> error=<metadata.error> code=<metadata.status.code>`.
Run by tests/tests/python_interop.rs; needs `python3 -m pip install grpcio grpcio-tools`.
"""

import argparse
import base64
import sys


def read_context(path):
    """Returns the current context's `ca`, `crt` and `key` as PEM bytes.

    A minimal reader for the flat layout basaltctl writes (no PyYAML needed):

        context: NAME
        contexts:
          NAME:
            endpoints: ...
            ca: BASE64
            crt: BASE64
            key: BASE64
    """
    current = None
    contexts = {}
    section = None
    name = None
    with open(path, encoding="utf-8") as config:
        for raw in config:
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            indent = len(line) - len(line.lstrip(" "))
            key, _, value = line.strip().partition(":")
            value = value.strip().strip("'\"")
            if indent == 0:
                section = key
                if key == "context":
                    current = value
            elif section == "contexts" and indent == 2 and not value:
                name = key.strip("'\"")
                contexts[name] = {}
            elif section == "contexts" and name is not None and indent == 4:
                contexts[name][key] = value
    if current not in contexts:
        sys.exit(f"{path}: context {current!r} not found (have {sorted(contexts)})")
    context = contexts[current]
    pems = {}
    for field in ("ca", "crt", "key"):
        if not context.get(field):
            sys.exit(f"{path}: context {current!r} has no {field}")
        pems[field] = base64.b64decode(context[field])
    return pems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="directory of the generated *_pb2 modules")
    parser.add_argument("--config", required=True, help="client config from basaltctl")
    parser.add_argument("--endpoint", required=True, help="apid's HOST:PORT")
    parser.add_argument("--nodes", help="comma-separated targets for a one-to-many call")
    args = parser.parse_args()

    sys.path.insert(0, args.stubs)
    import grpc  # noqa: E402  (after the stub path is known)
    from google.protobuf import empty_pb2  # noqa: E402
    from machine import machine_pb2_grpc  # noqa: E402

    pems = read_context(args.config)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pems["ca"],
        private_key=pems["key"],
        certificate_chain=pems["crt"],
    )
    # apid's certificate has IP SAN 127.0.0.1, so dialling the address verifies as is.
    with grpc.secure_channel(args.endpoint, credentials) as channel:
        stub = machine_pb2_grpc.MachineServiceStub(channel)
        try:
            metadata = [("nodes", node) for node in args.nodes.split(",")] if args.nodes else None
            reply = stub.Version(empty_pb2.Empty(), timeout=15, metadata=metadata)
        except grpc.RpcError as err:
            sys.exit(f"Version failed: {err.code()}: {err.details()}")
    if not reply.messages:
        sys.exit("Version returned no messages")
    if args.nodes:
        for message in reply.messages:
            meta = message.metadata
            print(
                f"node={meta.hostname} tag={message.version.tag} "
                f"error={meta.error} code={meta.status.code}"
            )
        return
    print(f"tag={reply.messages[0].version.tag}")


if __name__ == "__main__":
    main()
