"""The admin web panel: Flask over TLS, argon2id and TOTP, roles, CSRF, audited views."""
