from cookiebaker.cli import console

console()
