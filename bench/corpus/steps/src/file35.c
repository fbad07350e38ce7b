/* Generated source 35 of the steps context. */
int f35(int x) { return x * 35 + 1; }
