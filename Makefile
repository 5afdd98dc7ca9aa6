# The README's two commands: `make demo` (the main job on an example stack) and `make test` (everything).
.PHONY: setup daemon image demo lint test stop

setup:
	scripts/setup.sh

# The real libvirt daemon (qemu:///system), started if it does not answer.
daemon: setup
	scripts/libvirtd.sh ensure

# The base image debian-12.qcow2, into the image pool; built again only when its recipe (image/) changed.
image: daemon
	image/build.sh

# specs/lwm2m-guest.yaml on a real guest: apply, wait until it answers SSH, list, say how to log in.
demo: image
	scripts/demo.sh

lint: setup
	.venv/bin/ruff check epfiot tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports --no-logo

# In the daemon's network namespace: the tests talk to real guests at their private addresses there.
test: daemon lint image
	scripts/in-netns.sh .venv/bin/pytest -q

# Stops the daemon only if scripts/libvirtd.sh started it (destroying its running domains and networks first).
stop:
	scripts/libvirtd.sh stop
