# The README's two commands: `make demo` (the main job on an example stack) and `make test` (everything).
.PHONY: setup daemon demo lint test stop

setup:
	scripts/setup.sh

# The real libvirt daemon (qemu:///system), started if it does not answer.
daemon: setup
	scripts/libvirtd.sh ensure

demo: daemon
	.venv/bin/epfiot apply -f specs/first-vm.yaml
	.venv/bin/epfiot get vms

lint: setup
	.venv/bin/ruff check epfiot tests bench
	.venv/bin/mypy

test: daemon lint
	.venv/bin/pytest -q

# Stops the daemon only if scripts/libvirtd.sh started it (destroying its running domains and networks first).
stop:
	scripts/libvirtd.sh stop
