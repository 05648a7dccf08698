# Shell functions shared by scripts/demo, scripts/bench and scripts/tls-scan: a throwaway PKI
# (ECDSA P-256), a copy of a policy directory and a running isgd. Source this file; nothing runs on its own.

pki_newkey() { # file
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
	chmod 600 "$1"
}

pki_ca() { # name subject-cn
	pki_newkey "$1.key"
	openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 30 -out "$1.crt" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

pki_cert() { # name ca subject-cn extensions [days, default 30]
	pki_newkey "$1.key"
	openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
	printf '%s\n' "$4" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days "${5:-30}" \
		-extfile "$1.ext" -out "$1.crt" 2>/dev/null
	rm -f "$1.csr" "$1.ext"
}

# A partner CA, a gateway CA, the gateway's certificate and one client
# certificate per example partner, in directory $1.
pki_make_demo() {
	mkdir -p "$1" && chmod 700 "$1"
	(
		cd "$1"
		pki_ca partner-ca "ISG Demo Partner CA"
		pki_ca gateway-ca "ISG Demo Gateway CA"
		pki_cert gateway gateway-ca gateway.isg.example \
			"subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
		for p in met-police nhs-trust city-council; do
			pki_cert "$p" partner-ca "$p.partners.isg.example" "extendedKeyUsage=clientAuth"
		done
	)
}

# Copy the policy directory FROM (partners.yaml, agreements/*.yaml) to TO
# with the modes an admin would give it, 0755 and 0644: isgd refuses policy
# files that group or others may write, and git keeps no modes, so a checkout
# made under umask 002 cannot be loaded as it is.
policy_copy() { # from to
	install -d -m 0755 "$2" "$2/agreements"
	install -m 0644 "$1/partners.yaml" "$2/"
	install -m 0644 "$1"/agreements/*.yaml "$2/agreements/"
}

# Write DIR/isgd.yaml for a gateway on PORT with the policy directory POLICY.
isgd_write_config() { # dir port policy-dir
	cat >"$1/isgd.yaml" <<YAML
listen: 127.0.0.1:$2
threads: 2
tls:
  certificate: pki/gateway.crt
  key: pki/gateway.key
  client_ca: pki/partner-ca.crt
store:
  path: data/isg.db
  undelivered_ttl: 14d
policy_dir: $3
keys_dir: keys
log_level: info
YAML
}

# --new-store while DIR's store (isgd_write_config's data/isg.db) does not
# exist yet: isgd makes a store only when told to, and refuses the option
# where one exists. Left out for an isgd from before the option (scripts/bench
# compares with older builds), which makes its store unasked.
isgd_new_store() { # bin-dir dir
	[ -e "$2/data/isg.db" ] && return 0
	case $("$1/isgd" --help) in *--new-store*) echo --new-store ;; esac
}

# Start isgd from DIR/isgd.yaml, log to DIR/isgd.log; sets isgd_pid and waits
# until a partner certificate gets an answer. A caller that keeps an array
# named `started` of what it must stop on exit gets the pid added to it at
# once, before the wait can fail, so its EXIT trap stops an isgd that runs
# but never answers.
isgd_start() { # bin-dir dir port
	mkdir -p "$2/data"
	local new_store
	new_store=$(isgd_new_store "$1" "$2")
	"$1/isgd" --config "$2/isgd.yaml" $new_store 2>"$2/isgd.log" &
	isgd_pid=$!
	if declare -p started >/dev/null 2>&1; then started+=("$isgd_pid"); fi
	for _ in $(seq 100); do
		"$1/isgctl" whoami --gateway "127.0.0.1:$3" --cert "$2/pki/met-police.crt" \
			--key "$2/pki/met-police.key" --ca "$2/pki/gateway-ca.crt" >/dev/null 2>&1 && return 0
		kill -0 "$isgd_pid" 2>/dev/null || { cat "$2/isgd.log"; return 1; }
		sleep 0.1
	done
	echo "isgd did not answer within 10 s" >&2
	return 1
}
