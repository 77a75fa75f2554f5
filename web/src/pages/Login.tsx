/** Sign in with a token (`vigil user add` prints one, `vigil token issue` makes more). */
import { useState } from "react";
import { useSession } from "../session.tsx";
import { errorText } from "../lib/api.ts";
import { ErrorLine } from "../components/ErrorLine.tsx";

export function Login() {
  const { login } = useSession();
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  return (
    <main className="login">
      <form
        className="card"
        onSubmit={(e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          login(token.trim()).then(
            () => setToken(""),
            (err: unknown) => {
              setError(errorText(err));
              setBusy(false);
            },
          );
        }}
      >
        <h1>vigil</h1>
        <p>Sign in with your API token. It is exchanged for a session cookie that scripts on this page cannot read.</p>
        <label className="field">
          Token
          <input type="password" name="token" autoComplete="current-password" value={token} onChange={(e) => setToken(e.target.value)} required />
        </label>
        <ErrorLine error={error} />
        <button type="submit" className="primary" disabled={busy || !token.trim()}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}
