"""The settings of the ``ssh`` transport (``[transport]`` of a fleet file), apart from the
transport itself: every command loads the plugin to check a fleet file's settings, and only a
fleet with ``kind = "ssh"`` needs asyncssh (about 150 ms to import), which
:mod:`upgrader_ssh.transport` imports when the transport is first created.
"""

from __future__ import annotations

from upgrader.providers.base import Setting

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_CONFIG = "~/.ssh/config"
DEFAULT_SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
#: the identity files ssh (and asyncssh) tries when the config names none
DEFAULT_IDENTITIES = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa",
                      "id_rsa", "id_dsa")


class _UsePasswordEnv(type):
    """The type of the ``password`` setting, which takes no value: a password never goes in a
    fleet file. Checking a value against it raises the ``ValueError`` the fleet loader turns
    into a ConfigError naming the file, the key and its line (the value is not repeated)."""

    def __instancecheck__(cls, instance: object) -> bool:
        # "refused;" first: front ends mask the word after "password:" (upgrader.redact)
        raise ValueError("refused; a password is never written in the fleet file: put it in an "
                         "environment variable and name that variable in password_env "
                         "(e.g. password_env = \"UPGRADER_SSH_PASSWORD\")")


class use_password_env(metaclass=_UsePasswordEnv):  # named for the error text
    """See :class:`_UsePasswordEnv`."""


# what a type error says it expected (`password = true`): no value, the variable's name elsewhere
use_password_env.__name__ = "no value here (name the variable in password_env)"

SETTINGS: tuple[Setting, ...] = (
    Setting("known_hosts", (str, list), DEFAULT_KNOWN_HOSTS,
            "known_hosts file(s) holding the trusted host keys; trust-on-first-use records "
            "go to the first"),
    Setting("trust_on_first_use", bool, False,
            "accept the key of a host that has no known_hosts entry and record it there "
            "(a changed key is refused all the same)"),
    Setting("identity_files", list, [],
            "private key files to log in with; empty: the ssh config's IdentityFile, else "
            "~/.ssh/id_*"),
    Setting("passphrase_env", str, None,
            "name of an environment variable holding the passphrase of encrypted "
            "identity files"),
    Setting("password_env", str, None,
            "name of an environment variable holding the login password (password "
            "authentication, tried after the keys); unset: no password login"),
    Setting("password", use_password_env, None,
            "refused: a password is never written in the fleet file, use password_env"),
    Setting("agent", bool, True, "also use the ssh-agent at SSH_AUTH_SOCK (or IdentityAgent)"),
    Setting("config", str, DEFAULT_CONFIG,
            "OpenSSH client config file (Host aliases, HostName, User, Port, IdentityFile, "
            "ProxyJump); \"\" reads none"),
    Setting("system_config", str, DEFAULT_SYSTEM_CONFIG,
            "OpenSSH's system-wide client config, read after `config` as ssh does (with its "
            "Include lines, e.g. /etc/ssh/ssh_config.d/*.conf); \"\" reads none"),
    Setting("global_known_hosts", list, list(DEFAULT_GLOBAL_KNOWN_HOSTS),
            "system-wide known_hosts files, trusted after known_hosts as ssh does (missing "
            "ones are skipped); [] reads none"),
    Setting("username", str, None,
            "login user unless the host's vars.ssh_user says otherwise; default: the config's "
            "User, else the local user"),
    Setting("port", int, None,
            "SSH port unless the host's vars.ssh_port says otherwise; default: the config's "
            "Port, else 22"),
    Setting("connect_timeout", float, 10.0,
            "seconds to connect and log in (to each jump host, and then to the host)"),
    Setting("timeout", float, 300.0,
            "seconds a command may run before it is signalled and CommandTimeout raised "
            "(a per-call timeout overrides it)"),
    Setting("kill_grace", float, 2.0,
            "seconds between SIGTERM and SIGKILL for a command past its timeout"),
    Setting("keepalive_interval", float, 15.0,
            "seconds between keepalives on an idle connection (3 missed: dropped); 0 turns "
            "them off"),
    Setting("max_sessions", int, 10,
            "commands at once on one host's connection (keep it at or below the server's "
            "MaxSessions, 10 by default)"),
    Setting("max_parallel", int, 100,
            "commands (and connection attempts) in flight over all hosts"),
    Setting("sudo", bool, False,
            "run every command as root through `sudo -n --` (needs passwordless sudo)"),
    Setting("host_lock", bool, True,
            "run each command under the host's lock file (flock), in a process group of its "
            "own that is killed when its channel closes (needs flock and setsid, util-linux, "
            "on the host); false: as a plain `exec`, which may outlive its controller"),
    Setting("lock_dir", str, None,
            "directory of the lock files on the hosts (upgrader-<fleet>-<host>.lock); "
            "default: $XDG_RUNTIME_DIR of the login, else /tmp"),
    Setting("lock_wait", float, 120.0,
            "seconds a command waits for its host's lock, held by a command still running "
            "(e.g. of a killed controller), before failing"),
)

__all__ = ["SETTINGS", "use_password_env"]
