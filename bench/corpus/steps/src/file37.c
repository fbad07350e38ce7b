/* Generated source 37 of the steps context. */
int f37(int x) { return x * 37 + 1; }
