//! A secured Temporal for tests: Debian's nginx terminating TLS in front of the dev server
//! (`grpc_pass`), demanding a client certificate from the test's CA (mTLS) and a bearer API
//! key, with certificates made by `openssl` for each test.

use super::ChildGuard;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// The API key the proxy accepts.
pub const API_KEY: &str = "test-api-key-7f3a";

/// Certificates and keys of one test, in a directory of their own.
pub struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA with a server certificate for `localhost`/`127.0.0.1` and a client certificate,
    /// plus an unrelated CA with a client certificate of its own.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for ca in ["ca", "other-ca"] {
            openssl(
                dir.path(),
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                ],
            );
        }
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        std::fs::write(
            dir.path().join("client.ext"),
            "extendedKeyUsage=clientAuth\n",
        )
        .expect("write ext");
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("stranger", "other-ca", "client.ext"),
        ] {
            openssl(
                dir.path(),
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN=imagejob-{name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir.path(),
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }
        Self { dir }
    }

    /// A file of this PKI (`ca.crt`, `client.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A scratch file beside the certificates, holding `contents`.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

/// nginx in front of Temporal: TLS with the PKI's server certificate, a client certificate from
/// its CA required, and `authorization: Bearer API_KEY` required (else gRPC Unauthenticated).
pub struct TlsProxy {
    _nginx: ChildGuard,
    /// `127.0.0.1:PORT` of the TLS listener.
    pub address: String,
    access_log: PathBuf,
}

impl TlsProxy {
    /// Starts nginx for `temporal` (`host:port` of the plaintext dev server).
    pub fn start(pki: &Pki, temporal: &str) -> Self {
        let port = super::free_port();
        let dir = pki.path("nginx");
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let access_log = dir.join("access.log");
        let config = format!(
            r#"
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format grpc '$ssl_client_s_dn "$request" $status';
    access_log {access_log} grpc;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {server_crt};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        # Temporal's long polls last about a minute.
        grpc_read_timeout 600s;
        grpc_send_timeout 600s;
        client_body_timeout 600s;
        keepalive_timeout 600s;
        keepalive_requests 1000000;
        client_max_body_size 0;
        # A wrong key gets what Temporal's authorizer answers: gRPC Unauthenticated; so does a
        # missing client certificate (nginx's 496), instead of an HTML page.
        error_page 418 = @unauthenticated;
        error_page 496 = @no_certificate;
        location / {{
            if ($http_authorization != "Bearer {API_KEY}") {{
                return 418;
            }}
            grpc_pass grpc://{temporal};
        }}
        location @unauthenticated {{
            default_type application/grpc;
            add_header grpc-status 16 always;
            add_header grpc-message "Request unauthorized." always;
            return 200;
        }}
        location @no_certificate {{
            default_type application/grpc;
            add_header grpc-status 16 always;
            add_header grpc-message "client certificate required" always;
            return 200;
        }}
    }}
}}
"#,
            dir = dir.display(),
            access_log = access_log.display(),
            server_crt = pki.path("server.crt").display(),
            server_key = pki.path("server.key").display(),
            ca = pki.path("ca.crt").display(),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let nginx = ChildGuard::spawn(
            Command::new("nginx")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off; master_process off;"]),
        );
        let address = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {address}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _nginx: nginx,
            address,
            access_log,
        }
    }

    /// The access log: one line per gRPC call, with the client certificate's subject.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}
