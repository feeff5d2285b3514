"""Django management commands of ``schwarz.mailqueue`` (INSTALLED_APPS = [..., 'schwarz.mailqueue'])."""
